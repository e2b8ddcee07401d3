/**
 * Invariant 3 across a Postgres outage, and invariant 6 (no Postgres on the hot path): the service
 * runs on a throwaway Postgres that is stopped for ~10 s under load and started again.
 *
 * - no request fails because of Postgres: known users' tiers are cached, decisions are Redis-only;
 * - the process survives (every pg client has an error listener; nothing unhandled);
 * - /ready says 503 naming postgres while it is down, 200 once it is back;
 * - the flusher keeps the changes dirty in Redis while failing and writes them once Postgres is
 *   back: daily_usage ends equal to the 200s, exactly;
 * - the LISTEN connection comes back: a tier changed by plain SQL after the outage takes effect;
 * - SIGTERM while Postgres is down still exits 0 within 10 s; what it could not flush stays dirty
 *   in Redis and the next process writes it once Postgres is back.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { dirtyCount } from '../helpers/counters.ts'
import { byUser, createUsers, startLoad, usageTotals } from '../helpers/load.ts'
import { waitUntil } from '../helpers/net.ts'
import { startPostgresServer } from '../helpers/postgres-server.ts'
import { TEST_REDIS_URL, createTestRedis } from '../helpers/redis.ts'
import { startService } from '../helpers/service-process.ts'

const OUTAGE_MS = 10_000

t.test('Postgres stopped for 10 s under load: nothing fails, nothing is lost', async (t) => {
  const postgres = await startPostgresServer(t)
  const redis = createTestRedis(t)
  // The service creates the database and migrates it on start (npm start does the same).
  const svc = await startService(t, {
    DATABASE_URL: postgres.url('quota'),
    REDIS_URL: TEST_REDIS_URL,
    REDIS_KEY_PREFIX: redis.prefix,
    FLUSH_INTERVAL_MS: '500',
    LOG_LEVEL: 'info',
  })
  const pool = new pg.Pool({ connectionString: postgres.url('quota'), max: 2 })
  pool.on('error', () => {})
  t.teardown(() => pool.end())

  const secret = svc.env.JWT_SECRET as string
  const users = await createUsers(pool, secret, 6)
  const [probe] = await createUsers(pool, secret, 1)
  if (!probe) throw new Error('no probe user')
  const ids = users.map((u) => u.id)
  const call = async (path: string, authorization: string, body?: unknown): Promise<number> => {
    const res = await fetch(`${svc.baseUrl}${path}`, {
      method: 'POST',
      headers: { authorization, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    })
    await res.arrayBuffer()
    return res.status
  }

  // Warm-up: the service has seen every user (auth and tier caches), as it would in steady state.
  const warm = await Promise.all(users.map((u) => call('/api/usage/consume', u.authorization, { metric: 'api_calls', amount: 1 })))
  t.same(warm, users.map(() => 200), 'warm-up requests admitted')
  for (let i = 0; i < 12; i++) t.equal(await call('/api/deploy', probe.authorization), 201, `probe deployment ${i + 1} (enterprise)`)

  const load = startLoad({ baseUrls: [svc.baseUrl], users, concurrency: 4, maxRequests: 60_000 })
  await load.waitForAdmitted(200, 15_000)

  await postgres.stop('fast')
  const downAt = Date.now()
  const admittedAtDown = load.stats.admitted
  const readyDuring: { status: number; body: string }[] = []
  while (Date.now() - downAt < OUTAGE_MS) {
    const res = await fetch(`${svc.baseUrl}/ready`, { signal: AbortSignal.timeout(3000) })
    readyDuring.push({ status: res.status, body: await res.text() })
    await sleep(500)
  }
  const admittedDuringOutage = load.stats.admitted
  t.ok(!svc.exited(), 'the service is still running after 10 s without Postgres')
  await postgres.start()
  const upAt = Date.now()

  let readyAgainMs = -1
  await waitUntil(async () => {
    const res = await fetch(`${svc.baseUrl}/ready`, { signal: AbortSignal.timeout(3000) })
    await res.arrayBuffer()
    if (res.status === 200) readyAgainMs = Date.now() - upAt
    return res.status === 200
  }, { what: '/ready after Postgres is back', timeoutMs: 15_000, intervalMs: 100 })
  await sleep(1000)
  const stats = await load.stop()

  t.ok(readyDuring.length >= 10, `/ready polled ${readyDuring.length} times during the outage`)
  t.ok(readyDuring.every((r) => r.status === 503), '/ready is 503 throughout the outage')
  const notReady = readyDuring.find((r) => r.status === 503)
  t.match(notReady ? JSON.parse(notReady.body) : {}, {
    detail: { error: 'Service not ready', message: 'postgres is down', checks: { redis: 'ok', postgres: 'down' } },
  }, '/ready names postgres')
  t.ok(readyAgainMs >= 0, `/ready is 200 again ${readyAgainMs} ms after Postgres started`)

  t.same([...stats.statuses.keys()], [200], `every request answered 200 (${JSON.stringify([...stats.statuses])}; ${stats.samples.join(' | ')})`)
  t.equal(stats.unknown + stats.refused, 0, 'no request went unanswered')
  t.ok(admittedDuringOutage - admittedAtDown > 100, `load kept flowing during the outage (${admittedDuringOutage - admittedAtDown} admitted while Postgres was down)`)

  let caughtUpMs = -1
  await waitUntil(async () => {
    const totals = await usageTotals(pool, ids)
    const ok = ids.every((id) => (totals.get(id)?.api ?? 0) === (stats.admittedByUser.get(id) ?? 0) + 1)
    if (ok) caughtUpMs = Date.now() - upAt
    return ok
  }, { what: 'daily_usage catching up after the outage', timeoutMs: 20_000, intervalMs: 100 })
  const totals = await usageTotals(pool, ids)
  t.same(
    byUser(users, (id) => totals.get(id)?.api ?? 0),
    byUser(users, (id) => (stats.admittedByUser.get(id) ?? 0) + 1),
    'daily_usage = every 200 (warm-up included), per user',
  )
  t.equal(await dirtyCount(redis, redis.prefix), 0, 'nothing left dirty')

  // LISTEN is back: a plain-SQL tier change reaches the (otherwise 60 s) tier cache at once.
  await waitUntil(async () => svc.output().includes('postgres LISTEN connection restored'), {
    what: 'LISTEN reconnect log line', timeoutMs: 10_000, intervalMs: 100,
  })
  await pool.query(`UPDATE users SET tier = 'free' WHERE id = $1`, [probe.id])
  const changedAt = Date.now()
  let denied = -1
  for (let i = 0; i < 40 && denied < 0; i++) {
    if ((await call('/api/deploy', probe.authorization)) === 429) denied = Date.now() - changedAt
    else await sleep(50)
  }
  t.ok(denied >= 0 && denied <= 1500, `tier change by SQL took effect after ${denied} ms (LISTEN reconnected)`)

  t.match(svc.output(), /usage flush failed; changes kept in redis, retrying/, 'the flusher reported the failure')
  const recovered = await waitUntil(async () => svc.output().includes('usage flush recovered'), {
    what: 'the recovery log line', timeoutMs: 6000, intervalMs: 50,
  }).then(() => true, () => false)
  t.ok(recovered, 'and the recovery')
  // SIGTERM during an outage: the final flush fails, nothing is lost.
  await postgres.stop('fast')
  const late = startLoad({ baseUrls: [svc.baseUrl], users, concurrency: 2, maxRequests: 2000 })
  await late.waitForAdmitted(50, 10_000)
  const lateStats = await late.stop()
  const termAt = Date.now()
  svc.signal('SIGTERM')
  t.same(await svc.waitForExit(10_000), { code: 0, signal: null }, `SIGTERM with Postgres down: exit 0 after ${Date.now() - termAt} ms`)
  t.match(svc.output(), /final usage flush failed/, 'the failed final flush is logged')
  t.ok((await dirtyCount(redis, redis.prefix)) > 0, 'the unflushed changes are still marked dirty in Redis')
  await postgres.start()
  const next = await startService(t, { ...svc.env, PORT: undefined })
  await waitUntil(async () => {
    const now = await usageTotals(pool, ids)
    return ids.every((id) => (now.get(id)?.api ?? 0) === (stats.admittedByUser.get(id) ?? 0) + 1 + (lateStats.admittedByUser.get(id) ?? 0))
  }, { what: 'the next process flushing what the stopped one could not', timeoutMs: 10_000, intervalMs: 100 })
  t.pass('the next process wrote them: daily_usage = every 200, exactly')
  next.signal('SIGTERM')
  t.same(await next.waitForExit(10_000), { code: 0, signal: null })

  t.comment(`${stats.requests} requests, ${stats.admitted} admitted (${admittedDuringOutage - admittedAtDown} while Postgres was down); ` +
    `/ready 200 ${readyAgainMs} ms and daily_usage exact ${caughtUpMs} ms after Postgres started`)
  if (!t.passing()) t.comment(svc.output())
})

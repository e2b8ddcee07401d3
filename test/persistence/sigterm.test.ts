/**
 * DESIGN 1.8 "Signals" and invariant 3 (SIGTERM flushes): under a steady load of consumes, SIGTERM
 * makes the service drain the requests in flight, flush every admitted increment to daily_usage
 * and exit 0 within 10 s. Afterwards daily_usage holds exactly the number of requests answered
 * 200 — not one fewer (lost in Redis) and not one more (counted but never answered).
 *
 * A request racing the close of an idle keep-alive socket gets a connection reset without being
 * read (counted as `unknown` by the load); equality with the 200s proves none of those counted.
 *
 * Twice: signalled directly (node is the spawned process) and through `npm start` (the signal goes
 * to npm, as from a process manager that only knows npm's pid).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { Test } from 'tap'
import { byUser, createUsers, startLoad, usageTotals } from '../helpers/load.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { dirtyCount, redisTotals } from '../helpers/counters.ts'
import { TEST_REDIS_URL, createTestRedis } from '../helpers/redis.ts'
import { startService } from '../helpers/service-process.ts'

async function sigtermUnderLoad(t: Test, viaNpm: boolean): Promise<void> {
  const db = await createTestDatabase(t)
  const redis = createTestRedis(t)
  const svc = await startService(
    t,
    { DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redis.prefix, FLUSH_INTERVAL_MS: '1000' },
    { viaNpm },
  )
  const users = await createUsers(db.pool, svc.env.JWT_SECRET as string, 6)
  const load = startLoad({ baseUrls: [svc.baseUrl], users, concurrency: 4, maxRequests: 40_000 })

  // Steady load for a while, so increments are both flushed and still pending at the signal.
  await load.waitForAdmitted(300, 15_000)
  await sleep(1500)
  const dirtyBefore = await dirtyCount(redis, redis.prefix)
  const signalledAt = Date.now()
  svc.signal('SIGTERM')
  const status = await svc.waitForExit(10_000)
  const exitMs = Date.now() - signalledAt
  const stats = await load.stop()

  t.same(status, { code: 0, signal: null }, `exits 0 (after ${exitMs} ms)`)
  t.ok(exitMs < 10_000, 'within 10 s')
  t.ok(stats.admitted >= 300, `requests admitted under load: ${stats.admitted}`)
  t.ok(dirtyBefore > 0, `changes were waiting for a flush at the signal (${dirtyBefore} user-days dirty)`)
  const ids = users.map((u) => u.id)
  const totals = await usageTotals(db.pool, ids)
  t.same(
    byUser(users, (id) => totals.get(id)?.api ?? 0),
    byUser(users, (id) => stats.admittedByUser.get(id) ?? 0),
    'daily_usage api_calls = requests answered 200, per user',
  )
  const inRedis = await redisTotals(redis, redis.prefix, ids)
  t.same(byUser(users, (id) => inRedis.get(id)?.api ?? 0), byUser(users, (id) => totals.get(id)?.api ?? 0), 'Redis agrees')
  t.equal(await dirtyCount(redis, redis.prefix), 0, 'nothing left dirty in Redis')
  t.comment(`${viaNpm ? 'npm start' : 'node'}: ${stats.requests} requests, ${stats.admitted} admitted, statuses ${JSON.stringify([...stats.statuses])}, refused after close ${stats.refused}, cut on idle keep-alive sockets ${stats.unknown}; exit after ${exitMs} ms`)
  if (!t.passing()) t.comment(svc.output())
}

t.test('SIGTERM to the node process under load: exit 0 within 10 s, totals exact', async (t) => {
  await sigtermUnderLoad(t, false)
})

t.test('SIGTERM to `npm start` under load: exit 0 within 10 s, totals exact', async (t) => {
  await sigtermUnderLoad(t, true)
})

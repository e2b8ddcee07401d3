/**
 * Invariant 10 across a crash: a job's process dies (SIGKILL) with its holds open. The holds stay
 * counted until their ttl (they live in Redis, not in the process), then lapse by themselves; a
 * commit after that is a 404, and daily_usage only ever sees what was consumed.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { createTestDatabase } from '../helpers/database.ts'
import { createUsers } from '../helpers/load.ts'
import { waitUntil } from '../helpers/net.ts'
import { TEST_REDIS_URL, createTestRedis } from '../helpers/redis.ts'
import { startService } from '../helpers/service-process.ts'

/** Long enough for a new process to start and answer while the holds are still open. */
const TTL_S = 8

t.test('SIGKILL with open holds: they lapse after their ttl, nothing of them reaches daily_usage', async (t) => {
  const db = await createTestDatabase(t)
  const redis = createTestRedis(t)
  const first = await startService(t, { DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redis.prefix, FLUSH_INTERVAL_MS: '200' })
  const [user] = await createUsers(db.pool, first.env.JWT_SECRET as string, 1, 'free')
  if (user === undefined) throw new Error('no user')
  const call = async (base: string, method: string, path: string, body?: object) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: user.authorization, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    })
    return { status: res.status, body: (await res.json()) as Record<string, unknown> }
  }

  const holds = []
  for (let i = 0; i < 4; i++) {
    const res = await call(first.baseUrl, 'POST', '/api/usage/reservations', { metric: 'compute_hours', amount: 2, ttl_seconds: TTL_S })
    t.equal(res.status, 201)
    holds.push(res.body.reservation_id as string)
  }
  const heldAt = Date.now()
  t.equal((await call(first.baseUrl, 'POST', '/api/usage/consume', { metric: 'compute_hours', amount: 1.5 })).status, 200)
  first.signal('SIGKILL')
  t.same(await first.waitForExit(5000), { code: null, signal: 'SIGKILL' }, 'the job runner died with 8 h held')

  const second = await startService(t, { ...first.env, PORT: undefined })
  const during = await call(second.baseUrl, 'GET', '/api/usage/status')
  t.ok(Date.now() - heldAt < TTL_S * 1000, 'the new process answers before the holds lapse')
  t.match(during.body, { metrics: { compute_hours: { current: 1.5, reserved: 8, remaining: 0.5 } } }, 'the holds outlive the process until their ttl')
  t.equal((await call(second.baseUrl, 'POST', '/api/usage/consume', { metric: 'compute_hours', amount: 1 })).status, 429,
    'held room is not free before the ttl')

  await sleep(Math.max(0, heldAt + TTL_S * 1000 + 200 - Date.now()))
  const after = await call(second.baseUrl, 'GET', '/api/usage/status')
  t.match(after.body, { metrics: { compute_hours: { reserved: 0 } } }, 'lapsed by themselves')
  const fill = await call(second.baseUrl, 'POST', '/api/usage/consume', { metric: 'compute_hours', amount: 8.5 })
  t.equal(fill.status, 200, 'all the room is back')
  for (const id of holds) t.equal((await call(second.baseUrl, 'POST', `/api/usage/reservations/${id}/commit`, { amount: 1 })).status, 404)

  const recorded = async () => (await db.pool.query('SELECT compute_hours::float8 AS ch FROM daily_usage WHERE user_id = $1', [user.id])).rows
  await waitUntil(async () => (await recorded())[0]?.ch === 10, {
    what: 'daily_usage showing the consumed 10 h', timeoutMs: 10_000, intervalMs: 100,
  })
  t.same(await recorded(), [{ ch: 10 }], 'only consumption is recorded, never the holds')
  second.signal('SIGTERM')
  t.same(await second.waitForExit(10_000), { code: 0, signal: null })
  if (!t.passing()) t.comment(first.output(), second.output())
})

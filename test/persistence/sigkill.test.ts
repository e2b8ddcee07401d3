/**
 * Invariant 3, SIGKILL: a killed process makes no final flush, but everything it admitted is in
 * Redis, marked dirty. A new process on the same Redis (same prefix) and Postgres flushes it
 * within two flush intervals of being ready: daily_usage then equals the counters exactly.
 *
 * Requests in flight at the kill may have been counted without an answer, so the exact equality
 * is between daily_usage and Redis; against the client's view the totals lie between the 200s
 * and the 200s plus the answers lost at the kill (at most the number of concurrent loops).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { dirtyCount, redisTotals } from '../helpers/counters.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { byUser, createUsers, startLoad, usageTotals } from '../helpers/load.ts'
import { waitUntil } from '../helpers/net.ts'
import { TEST_REDIS_URL, createTestRedis } from '../helpers/redis.ts'
import { startService } from '../helpers/service-process.ts'

const FLUSH_INTERVAL_MS = 1000

t.test('SIGKILL under load: the next process flushes what the dead one left dirty', async (t) => {
  const db = await createTestDatabase(t)
  const redis = createTestRedis(t)
  const env = { DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redis.prefix, FLUSH_INTERVAL_MS: String(FLUSH_INTERVAL_MS) }
  const first = await startService(t, env)
  const users = await createUsers(db.pool, first.env.JWT_SECRET as string, 6)
  const ids = users.map((u) => u.id)
  const load = startLoad({ baseUrls: [first.baseUrl], users, concurrency: 4, maxRequests: 40_000 })

  await load.waitForAdmitted(300, 15_000)
  await sleep(1200)
  first.signal('SIGKILL')
  t.same(await first.waitForExit(5000), { code: null, signal: 'SIGKILL' }, 'killed')
  const stats = await load.stop()

  const leftDirty = await dirtyCount(redis, redis.prefix)
  const inRedis = await redisTotals(redis, redis.prefix, ids)
  const before = await usageTotals(db.pool, ids)
  const redisSum = ids.reduce((s, id) => s + (inRedis.get(id)?.api ?? 0), 0)
  const pgSumBefore = ids.reduce((s, id) => s + (before.get(id)?.api ?? 0), 0)
  t.ok(leftDirty > 0, `the dead process left ${leftDirty} user-days dirty`)
  t.ok(pgSumBefore < redisSum, `daily_usage lags Redis after the kill (${pgSumBefore} < ${redisSum})`)
  t.ok(redisSum >= stats.admitted && redisSum <= stats.admitted + stats.unknown,
    `Redis holds every 200 (${stats.admitted}) plus at most the ${stats.unknown} answers lost at the kill: ${redisSum}`)

  // Same Redis, prefix, database and secret: the replacement process.
  const second = await startService(t, { ...first.env, PORT: undefined })
  const readyAt = Date.now()
  await waitUntil(async () => {
    const now = await usageTotals(db.pool, ids)
    return ids.every((id) => (now.get(id)?.api ?? 0) === (inRedis.get(id)?.api ?? 0))
  }, { what: 'daily_usage catching up with Redis', timeoutMs: 10_000, intervalMs: 50 })
  const caughtUpMs = Date.now() - readyAt
  t.ok(caughtUpMs <= 2 * FLUSH_INTERVAL_MS, `caught up ${caughtUpMs} ms after the new process was ready (<= 2 flush intervals)`)

  const after = await usageTotals(db.pool, ids)
  t.same(byUser(users, (id) => after.get(id)?.api ?? 0), byUser(users, (id) => inRedis.get(id)?.api ?? 0), 'daily_usage = Redis, per user')
  t.equal(await dirtyCount(redis, redis.prefix), 0, 'nothing left dirty')

  // The new process carries on from the same counts.
  const more = startLoad({ baseUrls: [second.baseUrl], users, concurrency: 2, maxRequests: 50 })
  await more.waitForAdmitted(20, 10_000)
  const moreStats = await more.stop()
  second.signal('SIGTERM')
  t.same(await second.waitForExit(10_000), { code: 0, signal: null }, 'the new process exits 0 on SIGTERM')
  const final = await usageTotals(db.pool, ids)
  t.same(
    byUser(users, (id) => final.get(id)?.api ?? 0),
    byUser(users, (id) => (inRedis.get(id)?.api ?? 0) + (moreStats.admittedByUser.get(id) ?? 0)),
    'later admissions add on top, exactly',
  )
  t.comment(`${stats.requests} requests, ${stats.admitted} admitted, ${stats.unknown} unanswered at the kill; ${leftDirty} user-days dirty; caught up in ${caughtUpMs} ms`)
  if (!t.passing()) t.comment(first.output(), second.output())
})

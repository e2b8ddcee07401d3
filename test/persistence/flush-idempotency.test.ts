/**
 * Invariant 3 at the flusher: totals are written as absolute values guarded by the Redis version
 * they were read at, and marks leave the dirty sets only after Postgres has the rows. So:
 * - the same flush twice (or a flush repeated after a crash between write and ack) changes nothing;
 * - two flushers (two replicas: two Redis clients, two pools, one prefix) racing each other leave
 *   exactly the rows one flusher would;
 * - a stale write (an older version) never overwrites a newer row;
 * - a change made while a flush is in flight stays dirty and is written by the next one;
 * - a Postgres error keeps every mark: a later flush with a working pool writes everything.
 */
import t from 'tap'
import type { DailyUsageRow } from '../helpers/database.ts'
import type { Test } from 'tap'
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { CounterUnavailableError } from '../../src/counters/store.ts'
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import { createPool } from '../../src/db/client.ts'
import type { Pool } from '../../src/db/client.ts'
import { loadRecordedUserDay, upsertTotals } from '../../src/db/daily-usage.ts'
import type { DayTotals } from '../../src/db/daily-usage.ts'
import { Flusher, PACED } from '../../src/persistence/flusher.ts'
import { closeRedis } from '../helpers/redis.ts'
import { freePort } from '../helpers/net.ts'
import { TEST_REDIS_URL } from '../helpers/redis.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import type { UsageHarness } from '../helpers/usage.ts'

interface Row extends DailyUsageRow {
  updated_at: string
}

async function allRows(pool: Pool): Promise<Row[]> {
  const { rows } = await pool.query<Row>(
    `SELECT user_id::text, date::text, deployments_created, api_calls, compute_hours::text, storage_gb::text,
            version, updated_at::text
       FROM daily_usage ORDER BY user_id, date`,
  )
  return rows
}

/** Rows without updated_at, in a form t.same can compare with Redis' values. */
const totalsOf = (rows: Row[]) => rows.map((r) => ({
  user: r.user_id, date: r.date, d: r.deployments_created, a: r.api_calls, c: Number(r.compute_hours), s: Number(r.storage_gb), v: r.version,
}))

/** What Redis holds for every dirty-or-not user-day of `users` on the harness' day. */
async function redisRows(h: UsageHarness, users: string[]) {
  const day = new Date(h.clock.now()).toISOString().slice(0, 10)
  const out = []
  for (const user of [...users].sort()) {
    const entry = await h.redis.hget(h.store.keys.userDay(user, day), user)
    if (entry === null) continue
    const [d, a, c, s, v] = entry.split(',')
    out.push({ user, date: day, d: Number(d ?? 0) / 1e6, a: Number(a ?? 0) / 1e6, c: Number(c ?? 0) / 1e6, s: Number(s ?? 0) / 1e6, v: Number(v) })
  }
  return out
}

// Decisions here are not about latency: a generous Redis bound keeps a busy CI machine from turning
// a first-seen user's decision (Redis, Postgres seed, Redis) into a 503.
const HARNESS = { commandTimeoutMs: 2000 }

const dirtyTotal = async (store: RedisCounterStore): Promise<number> => (await store.dirtyCounts()).reduce((x, y) => x + y, 0)

/** Spends a little of every metric for each user (several calls each, so versions are > 1). */
async function spend(h: UsageHarness, users: string[], rounds = 3): Promise<void> {
  for (let r = 0; r < rounds; r++) {
    await Promise.all(users.map(async (u, i) => {
      await h.service.consume(u, { api_calls: 1 + (i % 3), compute_hours: 0.1 })
      if (i % 2 === 0) await h.service.incrementUsage(u, 'storage', 0.25)
      if (i % 5 === 0) await h.service.consume(u, { deployments: 1 })
    }))
  }
}

/** A second "replica" on the same Redis prefix and database: its own client, pool and flusher. */
async function secondFlusher(t: Test, h: UsageHarness): Promise<{ flusher: Flusher; store: RedisCounterStore; pool: Pool }> {
  const redis = createRedisClient({ url: TEST_REDIS_URL, commandTimeoutMs: 2000 })
  await connectRedis(redis, TEST_REDIS_URL)
  const pool = createPool(h.db.url)
  t.teardown(async () => {
    await closeRedis(redis)
    await pool.end()
  })
  const store = new RedisCounterStore(redis, { prefix: h.prefix, loader: (u, d) => loadRecordedUserDay(pool, u, d) })
  return { flusher: new Flusher({ store, pool, perBucket: 7, batchSize: 13 }), store, pool }
}

t.test('the same flush twice leaves identical rows', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  const users = Array.from({ length: 20 }, newUserId)
  await spend(h, users)

  const first = await h.flusher.flushOnce()
  t.equal(first.read, 20)
  t.equal(first.written, 20)
  t.equal(first.acked, 20)
  const rows = await allRows(h.pool)
  t.same(totalsOf(rows), await redisRows(h, users), 'daily_usage = Redis')

  t.same(await h.flusher.flushOnce(), { read: 0, written: 0, acked: 0 }, 'a second pass finds nothing dirty')
  // The same totals written again (a flusher that crashed after writing, before its ack).
  const same: DayTotals[] = rows.map((r) => ({
    userId: r.user_id, day: r.date, version: r.version, counts: {
      deployments: r.deployments_created * 1e6, api_calls: r.api_calls * 1e6,
      compute_hours: Math.round(Number(r.compute_hours) * 1e6), storage: Math.round(Number(r.storage_gb) * 1e6),
    },
  }))
  t.equal(await upsertTotals(h.pool, same), 0, 'rewriting the same versions changes no row')
  t.same(await allRows(h.pool), rows, 'rows identical, updated_at included')

  // Write without ack, then a full flush: the repeat is a no-op in Postgres and clears the marks.
  await spend(h, users.slice(0, 5), 1)
  const entries = await h.store.readDirty(100)
  t.equal(entries.length, 5)
  const written = entries.map((e) => ({ userId: e.userId, day: e.day, counts: e.state!.counts, version: e.state!.version }))
  t.equal(await upsertTotals(h.pool, written), 5, 'written once (no ack: as if the process died here)')
  const afterWrite = await allRows(h.pool)
  const again = await h.flusher.flushAll()
  t.match(again, { read: 5, written: 0, acked: 5 }, 'the repeat writes nothing and acks')
  t.same(await allRows(h.pool), afterWrite, 'rows identical')
  t.equal(await dirtyTotal(h.store), 0)
})

t.test('a paced flush (the midnight close) writes everything in small steps', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  // About 47 user-days per bucket: more than a paced pass reads (32), so it takes several passes.
  const users = Array.from({ length: 3000 }, newUserId)
  await spend(h, users, 1)
  const passes = h.flusher.stats.passes
  const result = await h.flusher.flushAll(PACED)
  t.match(result, { read: 3000, written: 3000, acked: 3000 })
  t.ok(h.flusher.stats.passes - passes >= 2, `in ${h.flusher.stats.passes - passes} passes`)
  t.same(totalsOf(await allRows(h.pool)), await redisRows(h, users), 'daily_usage = Redis')
  t.equal(await dirtyTotal(h.store), 0)
})

t.test('two flushers racing (two replicas) leave exactly one flusher\'s rows', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  const other = await secondFlusher(t, h)
  const mine = new Flusher({ store: h.store, pool: h.pool, perBucket: 5, batchSize: 11 })
  const users = Array.from({ length: 60 }, newUserId)

  // Spending and both flushers interleave for several rounds.
  for (let round = 0; round < 8; round++) {
    await Promise.all([
      spend(h, users, 1),
      mine.flushOnce(),
      other.flusher.flushOnce(),
      mine.flushOnce(),
      other.flusher.flushOnce(),
    ])
  }
  await Promise.all([mine.flushAll(), other.flusher.flushAll()])
  await Promise.all([mine.flushAll(), other.flusher.flushAll()])
  t.equal(await dirtyTotal(h.store), 0, 'nothing left dirty')
  const rows = await allRows(h.pool)
  t.equal(rows.length, 60)
  t.same(totalsOf(rows), await redisRows(h, users), 'daily_usage = Redis for every user-day')
  const expectedApi = users.reduce((sum, _u, i) => sum + 8 * (1 + (i % 3)), 0)
  t.equal(rows.reduce((sum, r) => sum + r.api_calls, 0), expectedApi, 'api_calls total = what was spent')
  t.ok(mine.stats.rowsWritten > 0 && other.flusher.stats.rowsWritten > 0, `both wrote (${mine.stats.rowsWritten} + ${other.flusher.stats.rowsWritten} row writes)`)

  // Both at once over the same fresh marks: identical result, whichever wins.
  await spend(h, users, 1)
  const expected = await redisRows(h, users)
  const [x, y] = await Promise.all([mine.flushOnce(), other.flusher.flushOnce()])
  t.ok(x.written + y.written >= 60, `every changed row written at least once (${x.written} + ${y.written})`)
  await Promise.all([mine.flushAll(), other.flusher.flushAll()])
  t.same(totalsOf(await allRows(h.pool)), expected, 'rows = Redis after a concurrent flush')
  t.equal(await dirtyTotal(h.store), 0)
})

t.test('a stale write never overwrites a newer row', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  const user = newUserId()
  await h.service.consume(user, { api_calls: 5, compute_hours: 1.5 })
  await h.service.consume(user, { api_calls: 5 })
  await h.flusher.flushAll()
  const [row] = await allRows(h.pool)
  t.match(row, { api_calls: 10, version: 2 })
  t.equal(Number(row?.compute_hours), 1.5)
  const day = row!.date

  const counts = { deployments: 0, api_calls: 5e6, compute_hours: 1.5e6, storage: 0 }
  const older: DayTotals = { userId: user, day, counts, version: 1 }
  t.equal(await upsertTotals(h.pool, [older]), 0, 'version 1 < 2: not written')
  t.same(await allRows(h.pool), [row], 'row unchanged')
  t.equal(await upsertTotals(h.pool, [{ ...older, counts: { ...counts, api_calls: 99e6 }, version: 2 }]), 0, 'same version: not written either')
  t.same(await allRows(h.pool), [row], 'row unchanged')
  t.equal(await upsertTotals(h.pool, [{ ...older, counts: { ...counts, api_calls: 11e6 }, version: 3 }]), 1, 'a newer version is written')
  t.match((await allRows(h.pool))[0], { api_calls: 11, version: 3 })
})

t.test('a change during a flush stays dirty for the next one', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  const user = newUserId()
  await h.service.consume(user, { api_calls: 1 })
  const entries = await h.store.readDirty(100)
  t.equal(entries.length, 1)
  const e = entries[0]!
  // The flusher has read version 1; the user spends again before the write and ack.
  await h.service.consume(user, { api_calls: 1 })
  await upsertTotals(h.pool, [{ userId: e.userId, day: e.day, counts: e.state!.counts, version: e.state!.version }])
  t.equal(await h.store.acknowledge(e.bucket, [{ userId: e.userId, day: e.day, version: e.state!.version }]), 0, 'the ack of version 1 keeps the mark (now version 2)')
  t.equal(await dirtyTotal(h.store), 1)
  t.match((await allRows(h.pool))[0], { api_calls: 1, version: 1 })
  await h.flusher.flushAll()
  t.match((await allRows(h.pool))[0], { api_calls: 2, version: 2 }, 'the next flush writes the change')
  t.equal(await dirtyTotal(h.store), 0)
})

t.test('a Postgres error keeps the dirty marks; a later flush writes everything', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  const users = Array.from({ length: 15 }, newUserId)
  await spend(h, users)
  const dirtyBefore = await h.store.dirtyCounts()
  t.equal(dirtyBefore.reduce((x, y) => x + y, 0), 15)

  const dead = createPool(`postgres://postgres@127.0.0.1:${await freePort()}/quota`, { connectionTimeoutMillis: 1000 })
  t.teardown(() => dead.end())
  const broken = new Flusher({ store: h.store, pool: dead, intervalMs: 20, maxBackoffMs: 40 })
  await t.rejects(broken.flushOnce(), 'flushOnce rejects when Postgres cannot be reached')
  t.same(await h.store.dirtyCounts(), dirtyBefore, 'every mark kept')

  // The timer loop: fails, backs off, keeps the marks, never throws out of the timer.
  broken.start()
  const deadline = Date.now() + 5000
  while (broken.stats.consecutiveFailures < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.ok(broken.stats.consecutiveFailures >= 2, `the loop keeps retrying (${broken.stats.consecutiveFailures} failures)`)
  t.match(broken.stats.lastError, /ECONNREFUSED|connect/)
  await t.rejects(broken.stop(), 'its final flush fails too')
  t.same(await h.store.dirtyCounts(), dirtyBefore, 'still every mark kept')
  t.equal((await allRows(h.pool)).length, 0, 'nothing written')

  const r = await h.flusher.flushAll()
  t.match(r, { read: 15, written: 15, acked: 15 })
  t.same(totalsOf(await allRows(h.pool)), await redisRows(h, users), 'a working pool writes everything')
  t.equal(await dirtyTotal(h.store), 0)
})

t.test('a user deleted meanwhile does not block the batch', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  const users = Array.from({ length: 4 }, newUserId)
  await spend(h, users, 1)
  await h.pool.query('DELETE FROM users WHERE id = $1', [users[0]])
  const r = await h.flusher.flushAll()
  t.match(r, { read: 4, written: 3, acked: 4 }, 'the others are written; the orphan mark is dropped')
  t.equal((await allRows(h.pool)).length, 3)
  t.equal(await dirtyTotal(h.store), 0)
})

t.test('a row Postgres refuses does not hold back the others', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  // Any row-specific refusal (a value out of range, a constraint an operator added...): here a
  // CHECK that only the heavy user's row fails.
  await h.pool.query('ALTER TABLE daily_usage ADD CONSTRAINT test_refuse_big CHECK (api_calls < 1000)')
  const heavy = newUserId()
  const others = Array.from({ length: 40 }, newUserId)
  await h.service.incrementUsage(heavy, 'api_calls', 5000)
  await spend(h, others, 1)
  const r = await h.flusher.flushAll()
  t.match(r, { written: 40, acked: 40 }, 'every other row written and acked')
  t.same(totalsOf(await allRows(h.pool)), await redisRows(h, others), 'exactly')
  t.equal(await dirtyTotal(h.store), 1, 'the refused user-day stays dirty (its exact value kept in Redis)')
  t.equal(await h.flusher.lagMs(h.clock.now() + 1000), 1000, 'and shows in the flush lag (scores are on the manual clock)')
  // Once Postgres accepts it, the next flush writes it.
  await h.pool.query('ALTER TABLE daily_usage DROP CONSTRAINT test_refuse_big')
  t.match(await h.flusher.flushAll(), { written: 1, acked: 1 })
  t.same(totalsOf(await allRows(h.pool)), await redisRows(h, [heavy, ...others]), 'all rows exact')
})

t.test('a read too big for the Redis timeout shrinks the pass instead of failing forever', async (t) => {
  const h = await createUsageHarness(t, HARNESS)
  const users = Array.from({ length: 300 }, newUserId)
  await spend(h, users, 1)
  // The decisions' connection times out on big reads (250 ms by default); here: above 8 per bucket.
  const sizes: number[] = []
  const readDirty = async (maxPerBucket: number) => {
    sizes.push(maxPerBucket)
    if (maxPerBucket > 8) throw new CounterUnavailableError('redis unavailable: Command timed out')
    return h.store.readDirty(maxPerBucket)
  }
  // The harness' store with readDirty replaced (its methods bound to it: they use private fields).
  const store = new Proxy(h.store, {
    get: (target, prop) => {
      if (prop === 'readDirty') return readDirty
      const value: unknown = Reflect.get(target, prop, target)
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
    },
  })
  const flusher = new Flusher({ store, pool: h.pool, intervalMs: 20, perBucket: 64 })
  flusher.start()
  const deadline = Date.now() + 10_000
  while ((await dirtyTotal(h.store)) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  await flusher.stop()
  t.equal(await dirtyTotal(h.store), 0, 'everything flushed by the timer loop')
  t.same(sizes.slice(0, 4), [64, 32, 16, 8], 'the read size halves until a read succeeds')
  t.ok(sizes.every((s, i) => i < 3 || s <= 8), `and does not retry the failing size (${sizes.length} reads)`)
  t.equal(flusher.stats.consecutiveFailures, 0, 'no pass failed')
  t.same(totalsOf(await allRows(h.pool)), await redisRows(h, users), 'daily_usage = Redis')
})

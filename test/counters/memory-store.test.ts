/**
 * The in-process store beyond the conformance suite: memory follows what is live over many
 * simulated days, lifetimes elapse on the store's clock, loads from the history happen once per
 * user with that user's calls kept in order, and a failed load fails the calls waiting for it.
 */
import { randomUUID } from 'node:crypto'
import v8 from 'node:v8'
import vm from 'node:vm'
import t from 'tap'
import { DAY_MS, ManualClock, utcDay } from '../../src/clock.ts'
import { BUCKETS as MEMORY_BUCKETS, bucketOf } from '../../src/counters/memory/bucket-marks.ts'
import { IDEMPOTENCY_TTL_MS } from '../../src/counters/memory/idempotency.ts'
import { MemoryCounterStore } from '../../src/counters/memory/memory-store.ts'
import { GAUGE_TTL_MS } from '../../src/counters/memory/user-state.ts'
import { BUCKETS as REDIS_BUCKETS, bucketOf as redisBucketOf } from '../../src/counters/redis/keys.ts'
import { CounterUnavailableError } from '../../src/counters/store.ts'
import type { DecisionRequest, SeedLoader, SeedState } from '../../src/counters/store.ts'
import { DAY, M, NOON, amount, emptyCounts } from './conformance/suite.ts'

/** A request at the clock's time, for the clock's day. */
function at(clock: ManualClock, userId: string, mode: DecisionRequest['mode'], metrics: DecisionRequest['metrics'], extra: Partial<DecisionRequest> = {}): DecisionRequest {
  const now = clock.now()
  return { mode, userId, day: utcDay(now), now, metrics, ...extra }
}

const key = (k: string) => ({ key: k, fingerprint: `consume|api_calls=${k}`, context: { day: DAY, tier: 'free' } })

/** A collectable heap (node --expose-gc, or the flag set at run time); undefined if neither works. */
function collector(): (() => void) | undefined {
  const exposed = (globalThis as { gc?: () => void }).gc
  if (typeof exposed === 'function') return exposed
  try {
    v8.setFlagsFromString('--expose-gc')
    const gc = vm.runInNewContext('gc') as unknown
    return typeof gc === 'function' ? (gc as () => void) : undefined
  } catch {
    return undefined
  }
}

t.test('memory stays flat over 60 simulated days of 1000 users', async (t) => {
  const clock = new ManualClock(NOON)
  const store = new MemoryCounterStore({ clock })
  const users = Array.from({ length: 1000 }, () => randomUUID())
  const gc = collector()
  const heapAfterGc = (): number => {
    gc?.()
    gc?.()
    return process.memoryUsage().heapUsed
  }
  let heapAtDay10 = 0
  let worst = { days: 0, idempotencyKeys: 0, queued: 0, dirty: 0, pendingKeys: 0, users: 0 }
  for (let day = 0; day < 60; day++) {
    clock.set(NOON + day * DAY_MS)
    for (const user of users) {
      await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 100)], { idempotency: key(`job-${day}`) }))
      await store.decide(at(clock, user, 'increment', [amount('compute_hours', 0.5), amount('storage', day % 2 === 0 ? 1 : -1)]))
    }
    // The flusher's pass: read every dirty user-day, acknowledge what was read.
    const readAt = clock.now()
    const entries = await store.readDirty(10_000)
    const byBucket = new Map<number, { userId: string; day: string; version: number }[]>()
    for (const e of entries) {
      const list = byBucket.get(e.bucket) ?? []
      list.push({ userId: e.userId, day: e.day, version: e.state?.version ?? 0 })
      byBucket.set(e.bucket, list)
    }
    for (const [bucket, written] of byBucket) await store.acknowledge(bucket, written, readAt)
    // And its copy of idempotent answers to the history.
    const keysByBucket = new Map<number, { userId: string; key: string }[]>()
    for (const p of await store.readPendingKeys(10_000)) keysByBucket.set(p.bucket, [...(keysByBucket.get(p.bucket) ?? []), p])
    for (const [bucket, keys] of keysByBucket) await store.acknowledgeKeys(bucket, keys)
    const size = store.size()
    if (day >= 5) {
      worst = {
        days: Math.max(worst.days, size.days), idempotencyKeys: Math.max(worst.idempotencyKeys, size.idempotencyKeys),
        queued: Math.max(worst.queued, size.queued), dirty: Math.max(worst.dirty, size.dirty),
        pendingKeys: Math.max(worst.pendingKeys, size.pendingKeys), users: Math.max(worst.users, size.users),
      }
    }
    if (day === 10) heapAtDay10 = heapAfterGc()
  }
  t.equal(worst.users, 1000, 'one entry per active user')
  t.ok(worst.days <= 3 * 1000, `day states: at most 3 live days per user (worst ${worst.days})`)
  t.ok(worst.idempotencyKeys <= 2 * 1000, `idempotency records: about one day's worth (worst ${worst.idempotencyKeys})`)
  t.ok(worst.queued <= 3 * 1000 + 2 * 1000 + 1000 + 1000, `the expiry queue holds what is live, plus a little due (worst ${worst.queued})`)
  t.equal(worst.dirty, 0, 'every flushed user-day is acknowledged')
  t.equal(worst.pendingKeys, 0, 'every idempotent answer copied to the history leaves the outbox')
  if (gc) {
    const growth = heapAfterGc() - heapAtDay10
    // 50 more days kept would be 50 000 day states and 50 000 records: tens of MB.
    t.ok(growth < 4 * 1024 * 1024, `heap after GC grew ${(growth / 1024 / 1024).toFixed(2)} MB between day 10 and day 60`)
  } else {
    t.comment('gc not available: checked entry counts only')
  }
  const answer = await store.decide(at(clock, users[0] as string, 'check', [amount('api_calls', 0, 100), amount('storage', 0, null)]))
  t.same(answer.current, [M, 0], "the last day's count, the gauge carried over every day")
})

t.test('an idempotency record is replayed for 24 h of the store clock, then forgotten', async (t) => {
  const clock = new ManualClock(NOON)
  const store = new MemoryCounterStore({ clock })
  const user = randomUUID()
  const first = await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('k') }))
  t.match(first, { outcome: 'allowed', replayed: false, current: [M] })
  clock.advance(IDEMPOTENCY_TTL_MS - 1)
  t.match(await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('k'), day: DAY })),
    { replayed: true, current: [M] }, 'one ms before its 24 h: replayed')
  clock.advance(1)
  t.match(await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('k'), day: DAY })),
    { replayed: false, current: [2 * M] }, 'after 24 h: a new call')
  t.equal(store.size().idempotencyKeys, 1, 'the old record is gone; the new one is held')
  clock.advance(IDEMPOTENCY_TTL_MS)
  await store.decide(at(clock, randomUUID(), 'check', [amount('api_calls', 0, 10)]))
  t.equal(store.size().idempotencyKeys, 0, "another user's decision reclaims the expired record")
})

t.test('with a bound on keys, the refusal names when the oldest expires on the store clock', async (t) => {
  const clock = new ManualClock(NOON)
  const store = new MemoryCounterStore({ clock, idempotencyKeysPerUser: 2 })
  const user = randomUUID()
  await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('a') }))
  clock.advance(1000)
  await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('b') }))
  clock.advance(1000)
  const refused = await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('c') }))
  t.match(refused, { outcome: 'too-many-keys', retryAfterMs: IDEMPOTENCY_TTL_MS - 2000, current: [] })
  clock.advance(1000)
  t.match(await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('c') })),
    { outcome: 'too-many-keys', retryAfterMs: IDEMPOTENCY_TTL_MS - 3000 }, 'still full, one second later')
  clock.set(NOON + IDEMPOTENCY_TTL_MS)
  t.match(await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('c'), day: DAY })),
    { outcome: 'allowed', current: [3 * M] }, 'room again once the oldest expired')
})

t.test('a day state expires 2 days after its day; a dirty mark left by it reads as gone', async (t) => {
  const clock = new ManualClock(NOON)
  const store = new MemoryCounterStore({ clock })
  const user = randomUUID()
  await store.decide(at(clock, user, 'increment', [amount('api_calls', 3), amount('storage', 2)]))
  clock.set(Date.parse(`${DAY}T00:00:00Z`) + 3 * DAY_MS - 1)
  t.match(await store.readDirty(10), [{ userId: user, day: DAY, since: NOON, state: { counts: { api_calls: 3 * M } } }], 'kept until 2 days after its day')
  clock.advance(1)
  const [gone] = await store.readDirty(10)
  t.match(gone, { userId: user, day: DAY, since: NOON, state: null }, 'then gone: nothing left to write')
  t.equal(store.size().days, 0, 'its memory is reclaimed')
  t.equal(await store.acknowledge(gone?.bucket ?? -1, [{ userId: user, day: DAY, version: 0 }]), 1, 'and the mark goes at the next acknowledgement')
  t.equal(await store.oldestDirty(), null)
  const later = await store.decide(at(clock, user, 'check', [amount('api_calls', 0, null), amount('storage', 0, null)]))
  t.same(later.current, [0, 2 * M], 'the gauge outlives the day')
})

t.test('history loads: once per user, the user\'s calls in order across the wait, others undisturbed', async (t) => {
  const history = new Map<string, SeedState>()
  const waiting: (() => void)[] = []
  let loads = 0
  const loader: SeedLoader = async (userId, day) => {
    loads++
    await new Promise<void>((resolve) => waiting.push(resolve))
    return history.get(`${userId}:${day}`) ?? { counts: emptyCounts(), version: 0, gauge: 0 }
  }
  const clock = new ManualClock(NOON)
  const store = new MemoryCounterStore({ clock, loader })
  const other = randomUUID()
  const warm = store.decide(at(clock, other, 'increment', [amount('api_calls', 1)]))
  while (waiting.length === 0) await new Promise((r) => setImmediate(r))
  waiting.shift()?.()
  await warm

  const user = randomUUID()
  history.set(`${user}:${DAY}`, { counts: { ...emptyCounts(), deployments: 2 * M }, version: 4, gauge: 0 })
  const calls = Array.from({ length: 6 }, () => store.decide(at(clock, user, 'consume', [amount('deployments', 1, 5)])))
  const reset = store.reset(user, DAY, clock.now(), ['deployments'])
  const after = store.decide(at(clock, user, 'consume', [amount('deployments', 1, 5)]))
  let otherDone = false
  void store.decide(at(clock, other, 'increment', [amount('api_calls', 1)])).then(() => { otherDone = true })
  await new Promise((r) => setImmediate(r))
  t.ok(otherDone, "another user's decision did not wait for this user's load")
  t.equal(loads, 2, 'one load for the new user, however many calls wait for it')
  waiting.shift()?.()
  const answers = await Promise.all(calls)
  t.same(answers.map((a) => a.outcome), ['allowed', 'allowed', 'allowed', 'denied', 'denied', 'denied'], 'in order, from the loaded 2')
  t.same(answers.map((a) => a.current[0]), [3 * M, 4 * M, 5 * M, 5 * M, 5 * M, 5 * M])
  await reset
  t.match(await after, { outcome: 'allowed', current: [M] }, 'the call queued after the reset ran after it')
  const [dirty] = (await store.readDirty(100)).filter((e) => e.userId === user)
  t.equal(dirty?.state?.version, 4 + 3 + 1 + 1, 'versions continue from the history')
})

t.test('a failed load fails the calls waiting for it, and the next call tries again', async (t) => {
  let fail = true
  let loads = 0
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const store = new MemoryCounterStore({
    clock: new ManualClock(NOON),
    loader: async () => {
      loads++
      await gate
      if (fail) throw new Error('connection refused')
      return { counts: emptyCounts(), version: 0, gauge: 0 }
    },
  })
  const user = randomUUID()
  const req = { mode: 'consume' as const, userId: user, day: DAY, now: NOON, metrics: [amount('api_calls', 1, 5)] }
  const pending = [store.decide(req), store.decide(req), store.decide(req)]
  release()
  const settled = await Promise.allSettled(pending)
  t.equal(loads, 1, 'one load for the three calls')
  for (const s of settled) {
    t.equal(s.status, 'rejected')
    if (s.status === 'rejected') {
      t.ok(s.reason instanceof CounterUnavailableError, 'the store cannot decide now: the fail mode applies')
      t.match(String((s.reason as Error).message), /connection refused/)
    }
  }
  fail = false
  t.match(await store.decide(req), { outcome: 'allowed', current: [M] }, 'the next call loads again and decides')
  t.equal(loads, 2)
})

t.test('the gauge expires 35 days after its last write, then is loaded again; without a loader a decision is synchronous', async (t) => {
  const clock = new ManualClock(NOON)
  const loaded: string[] = []
  const store = new MemoryCounterStore({
    clock,
    loader: async (userId, day) => {
      loaded.push(day)
      // The history's gauge moved meanwhile (another writer, say): a reload shows it.
      return { counts: emptyCounts(), version: 7, gauge: userId === user && loaded.length > 1 ? 9 * M : 0 }
    },
  })
  const user = randomUUID()
  await store.decide(at(clock, user, 'increment', [amount('storage', 3)]))
  t.same(loaded, [DAY], 'a new user is looked up once')
  clock.advance(GAUGE_TTL_MS - 1)
  t.same((await store.decide(at(clock, user, 'check', [amount('storage', 0, null)]))).current, [3 * M], 'held until 35 days after its write')
  clock.advance(1)
  t.same((await store.decide(at(clock, user, 'check', [amount('storage', 0, null)]))).current, [9 * M], 'then rebuilt from the history')
  t.equal(loaded.length, 2)

  const bare = new MemoryCounterStore({ clock })
  const answer = bare.decide(at(clock, randomUUID(), 'consume', [amount('api_calls', 1, 5)]))
  let done = false
  void answer.then(() => { done = true })
  await Promise.resolve()
  t.ok(done, 'decided synchronously: the returned promise was already resolved')
  t.match(await answer, { outcome: 'allowed', current: [M] })
})

t.test('buckets: the same partition of users as the Redis store', async (t) => {
  t.equal(MEMORY_BUCKETS, REDIS_BUCKETS)
  for (let i = 0; i < 200; i++) {
    const id = randomUUID()
    if (bucketOf(id) !== redisBucketOf(id)) t.fail(`bucket of ${id}`)
  }
  const store = new MemoryCounterStore()
  t.equal((await store.dirtyCounts()).length, MEMORY_BUCKETS)
  await store.start()
  await store.ping()
  await store.close()
  await t.rejects(store.decide({ mode: 'check', userId: randomUUID(), day: '2026-13-45', now: NOON, metrics: [amount('api_calls', 0, 1)] }), TypeError)
})

t.test('idempotent answers go to the history through an outbox, and come back after a restart', async (t) => {
  const clock = new ManualClock(NOON)
  const kept = new Map<string, { answer: string; expiresAt: number }>()
  const asked: string[] = []
  const store = new MemoryCounterStore({
    clock,
    keyLoader: async (userId, k) => {
      asked.push(k)
      if (k === 'from-redis') return { answer: 'consume|api_calls=from-redis,0,1,5000000,5000000,["2026-11-28","pro"]', expiresAt: NOON + 3_600_000 }
      return kept.get(`${userId}:${k}`)
    },
  })
  const user = randomUUID()
  const first = await store.decide(at(clock, user, 'consume', [amount('api_calls', 2, 10)], { idempotency: key('k') }))
  t.match(first, { outcome: 'allowed', current: [2 * M] })
  t.same(asked, ['k'], 'in the first 24 h after the store started, a new key is looked up first')

  const pending = await store.readPendingKeys(100)
  t.match(pending, [{ userId: user, key: 'k', kept: { expiresAt: NOON + IDEMPOTENCY_TTL_MS } }])
  const [entry] = pending
  if (entry?.kept) kept.set(`${user}:k`, entry.kept)
  t.equal(await store.acknowledgeKeys(entry?.bucket ?? -1, [{ userId: user, key: 'k' }]), 1)
  t.same(await store.readPendingKeys(100), [], 'kept: the outbox is empty')

  store.clear() // a restart: the counts come back from the (here empty) history, the answer from its keys
  clock.advance(60_000)
  const again = await store.decide(at(clock, user, 'consume', [amount('api_calls', 2, 10)], { idempotency: key('k') }))
  t.match(again, { outcome: 'allowed', replayed: true, current: [2 * M], limits: [10 * M], context: { day: DAY, tier: 'free' } },
    'the retried call replays the answer given before the restart')
  t.same((await store.decide(at(clock, user, 'check', [amount('api_calls', 0, 10)]))).current, [0], 'and counted nothing now')
  t.match(await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('from-redis') })),
    { outcome: 'denied', replayed: true, deniedIndex: 0, current: [5 * M], limits: [5 * M], context: { day: DAY, tier: 'pro' } },
    'an answer in the Redis store\'s encoding replays too')

  clock.set(NOON + IDEMPOTENCY_TTL_MS + 120_000)
  const count = asked.length
  await store.decide(at(clock, user, 'consume', [amount('api_calls', 1, 10)], { idempotency: key('late') }))
  t.equal(asked.length, count, '24 h after the start, keys are no longer looked up')
})

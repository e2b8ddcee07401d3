/**
 * Concurrent denials of one user share one store call (issue 13): once this process has seen a
 * user at or over a daily limit, identical consumes arriving while one of them is in flight wait
 * for its answer, and a denial is theirs too. An admission is never shared, and a refund or reset
 * while the lead is in flight makes its denial private again. Store calls are counted on the real
 * RedisCounterStore (real Redis).
 */
import t from 'tap'
import { utcDay } from '../../src/clock.ts'
import type { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import type { UsageHarness } from '../helpers/usage.ts'

/** Counts the store calls made through `store.decide`, by mode. */
function countStoreCalls(store: RedisCounterStore): { n: number; byMode: Record<string, number> } {
  const counter = { n: 0, byMode: {} as Record<string, number> }
  const decide = store.decide.bind(store)
  store.decide = (req, options) => {
    counter.n++
    counter.byMode[req.mode] = (counter.byMode[req.mode] ?? 0) + 1
    return decide(req, options)
  }
  return counter
}

/** Free tier: 10 deployments a day. */
async function spend(h: UsageHarness, user: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    if (!(await h.service.consume(user, { deployments: 1 })).allowed) throw new Error('expected an admission')
  }
}

const N = 100

t.test('N concurrent over-limit consumes of one user cost far fewer than N store calls', async (t) => {
  const h = await createUsageHarness(t)
  const calls = countStoreCalls(h.store)

  // At the limit, known from the last admission (it left 0): the next identical consumes lead.
  const atLimit = newUserId()
  await spend(h, atLimit, 10)
  calls.n = 0
  const burst = await Promise.all(Array.from({ length: N }, () => h.service.consume(atLimit, { deployments: 1 })))
  t.ok(burst.every((r) => !r.allowed && r.deniedMetric === 'deployments'), 'all denied')
  t.ok(calls.n <= 2, `${N} concurrent denials made ${calls.n} store call(s)`)
  t.same(burst[N - 1]?.metrics.deployments, { current: 10, limit: 10, remaining: 0, unit: 'count', period: 'day', amount: 1 })
  t.equal((await h.service.status(atLimit)).metrics.deployments.current, 10, 'nothing counted')

  // A larger amount follows too (denied for 1 means denied for 3); a bigger lead is not followed by a smaller call.
  calls.n = 0
  const atLimit2 = newUserId()
  await spend(h, atLimit2, 10)
  calls.n = 0
  const mixed = await Promise.all(Array.from({ length: N }, (_, i) => h.service.consume(atLimit2, { deployments: i === 0 ? 1 : 3 })))
  t.ok(mixed.every((r) => !r.allowed), 'all denied')
  t.ok(calls.n <= 2, `${N} concurrent denials with larger amounts made ${calls.n} store call(s)`)
})

t.test('no sharing without a reason to expect a denial, and admissions are never shared', async (t) => {
  const h = await createUsageHarness(t)
  const calls = countStoreCalls(h.store)

  // Under the limit, nothing known: every consume asks the store and is counted exactly.
  const fresh = newUserId()
  const first = await Promise.all(Array.from({ length: 50 }, () => h.service.consume(fresh, { deployments: 1 })))
  t.equal(first.filter((r) => r.allowed).length, 10, 'exactly 10 admitted')
  t.equal(calls.n, 50, 'each asked the store')
  t.equal((await h.service.status(fresh)).metrics.deployments.current, 10)

  // At the limit, then a refund of 3: the hint is gone, all go to the store, exactly 3 admitted.
  const refunded = newUserId()
  await spend(h, refunded, 10)
  await h.service.refund(refunded, { deployments: 3 }, utcDay(h.clock.now()))
  const after = await Promise.all(Array.from({ length: 50 }, () => h.service.consume(refunded, { deployments: 1 })))
  t.equal(after.filter((r) => r.allowed).length, 3, 'exactly the refunded 3 admitted')
  t.equal((await h.service.status(refunded)).metrics.deployments.current, 10)
})

/**
 * Holds the answers of consumes (already decided by Redis) until `release`: a lead's denial then
 * comes back after whatever the test does meanwhile. `decided`: the first one is back from Redis.
 */
function holdConsumeAnswers(store: RedisCounterStore): { decided: Promise<void>; release(): void } {
  let release!: () => void
  let decided!: () => void
  const gate = new Promise<void>((resolve) => {
    release = resolve
  })
  const first = new Promise<void>((resolve) => {
    decided = resolve
  })
  const decide = store.decide.bind(store)
  store.decide = async (req, options) => {
    const answer = await decide(req, options)
    if (req.mode !== 'consume') return answer
    decided()
    await gate
    return answer
  }
  return { decided: first, release }
}

t.test('a refund while the lead is in flight: its denial is not shared', async (t) => {
  const h = await createUsageHarness(t)
  const user = newUserId()
  await spend(h, user, 10)
  const held = holdConsumeAnswers(h.store)
  // The lead is denied by Redis (10 of 10); its answer is held while 1 is refunded.
  const burst = Array.from({ length: 20 }, () => h.service.consume(user, { deployments: 1 }))
  await held.decided
  await h.service.refund(user, { deployments: 1 }, utcDay(h.clock.now()))
  held.release()
  const results = await Promise.all(burst)
  t.equal(results.filter((r) => r.allowed).length, 1, 'the refunded unit is admitted once')
  t.equal((await h.service.status(user)).metrics.deployments.current, 10, 'exactly 10 counted')
})

t.test('a reset while the lead is in flight: followers ask the store', async (t) => {
  const h = await createUsageHarness(t)
  const user = newUserId()
  await spend(h, user, 10)
  const held = holdConsumeAnswers(h.store)
  const burst = Array.from({ length: 20 }, () => h.service.consume(user, { deployments: 1 }))
  await held.decided
  await h.admin.reset({ userId: user })
  held.release()
  const results = await Promise.all(burst)
  t.equal(results.filter((r) => r.allowed).length, 10, 'after the reset: 10 admitted (the lead was denied before it)')
  t.equal((await h.service.status(user)).metrics.deployments.current, 10, 'each admission counted')
})

t.test('idempotent consumes and multi-metric consumes are never shared', async (t) => {
  const h = await createUsageHarness(t)
  const calls = countStoreCalls(h.store)
  const user = newUserId()
  await spend(h, user, 10)
  calls.n = 0
  await Promise.all(Array.from({ length: 10 }, (_, i) => h.service.consume(user, { deployments: 1 }, { idempotencyKey: `k-${i}` })))
  t.equal(calls.n, 10, 'each keyed call asked the store')
  calls.n = 0
  await Promise.all(Array.from({ length: 10 }, () => h.service.consume(user, { deployments: 1, api_calls: 1 })))
  t.equal(calls.n, 10, 'each multi-metric call asked the store')
})

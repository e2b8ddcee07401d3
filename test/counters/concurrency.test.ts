/**
 * Invariant 1 (no over-admission): however many requests race at the boundary, the admitted total
 * is exactly the limit, a multi-metric consume is all-or-nothing, and a denial changes nothing —
 * not even the day hash's version.
 */
import t from 'tap'
import { utcDay } from '../../src/clock.ts'
import type { ConsumeResult } from '../../src/usage/types.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { dayRef, hfield, todayNoon } from './fixtures.ts'

// A generous Redis timeout: these tests are about atomicity, not latency, and 500 calls queued on
// one connection of a busy CI machine may take longer than the production 250 ms.
const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })
const day = utcDay(h.clock.now())

function distinct<T>(values: T[]): T[] {
  return [...new Set(values)]
}

function tally(results: ConsumeResult[]): { allowed: number; denied: number } {
  const allowed = results.filter((r) => r.allowed).length
  return { allowed, denied: results.length - allowed }
}

t.test('500 concurrent consumes of 1 deployment by a free user: exactly 10 admitted', async (t) => {
  const user = newUserId()
  await h.service.status(user) // warm: provisioned, tier cached, Redis state seeded (cold start: below)
  const results = await Promise.all(Array.from({ length: 500 }, () => h.service.consume(user, { deployments: 1 })))
  t.same(tally(results), { allowed: 10, denied: 490 })
  const admittedValues = results.filter((r) => r.allowed).map((r) => r.metrics.deployments?.current).sort((a, b) => (a ?? 0) - (b ?? 0))
  t.same(admittedValues, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'each admitted call saw its own increment')
  const denied = results.filter((r) => !r.allowed)
  t.same(distinct(denied.map((r) => r.deniedMetric)), ['deployments'], 'every denial names deployments')
  t.same(distinct(denied.map((r) => r.metrics.deployments?.current)), [10], 'every denial reports the untouched total')

  const dayKey = dayRef(h.store, user, day)
  t.equal(await hfield(h.redis, dayKey, 'd'), 10_000_000, 'Redis holds exactly 10 in micro-units')
  t.equal(await hfield(h.redis, dayKey, 'v'), 10, 'version bumped by the 10 admitted calls only: 490 denials changed nothing')
  const status = await h.service.status(user)
  t.equal(status.metrics.deployments.current, 10)
  t.equal(status.metrics.deployments.remaining, 0)

  const more = await Promise.all(Array.from({ length: 50 }, () => h.service.consume(user, { deployments: 1 })))
  t.equal(tally(more).allowed, 0, 'nothing more today')
  t.equal(await hfield(h.redis, dayKey, 'v'), 10, 'denials leave the version alone')
  t.equal(await hfield(h.redis, dayKey, 'd'), 10_000_000)
})

t.test('compute_hours 0.7 at a time: exactly 14 admitted, 9.8 exactly', async (t) => {
  const user = newUserId()
  await h.service.status(user) // warm: provisioned and seeded
  const results = await Promise.all(Array.from({ length: 100 }, () => h.service.consume(user, { compute_hours: 0.7 })))
  t.same(tally(results), { allowed: 14, denied: 86 })
  const dayKey = dayRef(h.store, user, day)
  t.equal(await hfield(h.redis, dayKey, 'c'), 9_800_000)
  t.equal(await hfield(h.redis, dayKey, 'v'), 14)
  const status = await h.service.status(user)
  t.equal(status.metrics.compute_hours.current, 9.8, 'exactly 9.8, not 9.799999999999999')
  t.equal(status.metrics.compute_hours.remaining, 0.2)
  t.same(distinct(results.filter((r) => !r.allowed).map((r) => r.metrics.compute_hours?.current)), [9.8])
})

t.test('multi-metric consume {deployments: 1, api_calls: 600} is all-or-nothing', async (t) => {
  const user = newUserId()
  await h.service.status(user)
  const results = await Promise.all(
    Array.from({ length: 100 }, () => h.service.consume(user, { deployments: 1, api_calls: 600 })),
  )
  t.same(tally(results), { allowed: 8, denied: 92 }, '8 × 600 = 4800 <= 5000 < 5400')
  const denied = results.filter((r) => !r.allowed)
  t.same(distinct(denied.map((r) => r.deniedMetric)), ['api_calls'], 'every denial names api_calls')
  t.same(distinct(denied.map((r) => r.reason)), ['Daily api_calls limit exceeded'])
  t.same(distinct(denied.map((r) => r.metrics.api_calls?.current)), [4800])
  t.same(distinct(denied.map((r) => r.metrics.deployments?.current)), [8], 'deployments (under its own limit) was not incremented by a denial')
  const dayKey = dayRef(h.store, user, day)
  t.equal(await hfield(h.redis, dayKey, 'd'), 8_000_000, 'no partial increment of deployments')
  t.equal(await hfield(h.redis, dayKey, 'a'), 4_800_000_000)
  t.equal(await hfield(h.redis, dayKey, 'v'), 8)
  const status = await h.service.status(user)
  t.equal(status.metrics.deployments.current, 8)
  t.equal(status.metrics.api_calls.current, 4800)
  // deployments alone still has room: the denials above did not eat it.
  const alone = await Promise.all(Array.from({ length: 10 }, () => h.service.consume(user, { deployments: 1 })))
  t.equal(tally(alone).allowed, 2)
})

t.test('cold state: 500 concurrent first consumes all get a decision, exactly 10 admitted', async (t) => {
  // The situation right after Redis lost its data (or a user's first burst): the tier is cached,
  // the Redis state is not there, so every call must be seeded from Postgres first. Redis is up
  // the whole time, so no call may end in UsageUnavailableError (503).
  const user = newUserId()
  await h.limits.userTier(user)
  const settled = await Promise.allSettled(Array.from({ length: 500 }, () => h.service.consume(user, { deployments: 1 })))
  const failures = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected')
  const causes = [...new Set(failures.map((f) => String((f.reason as Error & { cause?: Error }).cause?.message ?? f.reason)))]
  t.same({ failed: failures.length, causes }, { failed: 0, causes: [] }, 'no decision fails while Redis is up')
  const results = settled.filter((s): s is PromiseFulfilledResult<ConsumeResult> => s.status === 'fulfilled').map((s) => s.value)
  t.equal(tally(results).allowed, 10, 'exactly 10 admitted')
  t.equal(await hfield(h.redis, dayRef(h.store, user, day), 'd'), 10_000_000)
})

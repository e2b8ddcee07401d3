/**
 * The CounterStore conformance suite: one set of tests, parameterised by a store factory, that
 * every store must pass unchanged (invariant 9: same answers in every mode). It speaks only the
 * CounterStore interface — micro-units, metric names, UTC days — never a store's internals.
 *
 * A factory gives a fresh, started store over its own empty state, a `history` the store seeds
 * from after losing state (a plain map: the store's collaborator, standing in for daily_usage),
 * and `loseState()`, which makes the store forget everything it holds (Redis restarted without
 * persistence, say).
 */
import type { Test } from 'tap'
import type { CounterStore, DecisionRequest, MetricAmount, SeedState } from '../../../src/counters/store.ts'
import { MAX_TOTAL_MICRO } from '../../../src/metrics.ts'
import type { MetricName } from '../../../src/metrics.ts'
import { newUserId } from '../../helpers/usage.ts'
import { runHoldConformance } from './holds-suite.ts'
import { runModelTest } from './model.ts'

export interface StoreUnderTest {
  store: CounterStore
  /** What the store reads after losing a user-day: `${userId}:${day}` -> state. */
  history: Map<string, SeedState>
  /** Forgets every counter, mark and idempotency record the store holds. */
  loseState(): Promise<void>
}

export type StoreFactory = (t: Test) => Promise<StoreUnderTest>

export const DAY = '2026-11-28'
export const NOON = Date.parse(`${DAY}T12:00:00Z`)
export const M = 1_000_000

export function amount(metric: MetricName, units: number, limitUnits: number | null = null): MetricAmount {
  return { metric, amount: Math.round(units * M), limit: limitUnits === null ? null : Math.round(limitUnits * M) }
}

export function request(userId: string, mode: DecisionRequest['mode'], metrics: MetricAmount[], extra: Partial<DecisionRequest> = {}): DecisionRequest {
  return { mode, userId, day: DAY, now: NOON, metrics, ...extra }
}

export function emptyCounts(): SeedState['counts'] {
  return { deployments: 0, api_calls: 0, compute_hours: 0, storage: 0 }
}

export function runConformance(t: Test, name: string, factory: StoreFactory): void {
  runHoldConformance(t, name, factory)
  t.test(`${name}: compare before increment, exact to the micro-unit`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    for (let i = 0; i < 10; i++) {
      const a = await store.decide(request(user, 'consume', [amount('compute_hours', 0.1, 1)]))
      t.equal(a.outcome, 'allowed')
    }
    const last = await store.decide(request(user, 'check', [amount('compute_hours', 0, 1)]))
    t.same(last.current, [M], 'ten times 0.1 is exactly 1')
    const over = await store.decide(request(user, 'consume', [amount('compute_hours', 0.000001, 1)]))
    t.match(over, { outcome: 'denied', deniedIndex: 0, current: [M], limits: [M] }, 'one micro-unit over: denied')
    t.same((await store.decide(request(user, 'check', [amount('compute_hours', 0, 1)]))).current, [M], 'the denial changed nothing')
  })

  t.test(`${name}: all metrics or none, the first denied named`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    await store.decide(request(user, 'consume', [amount('api_calls', 4, 5)]))
    const denied = await store.decide(request(user, 'consume', [amount('deployments', 1, 10), amount('api_calls', 2, 5), amount('storage', 1, 0.5)]))
    t.match(denied, { outcome: 'denied', deniedIndex: 1, current: [0, 4 * M, 0] }, 'api_calls named: first in order')
    const after = await store.decide(request(user, 'check', [amount('deployments', 0, 10), amount('api_calls', 0, 5), amount('storage', 0, 5)]))
    t.same(after.current, [0, 4 * M, 0], 'nothing of the denied call was counted')
    const ok = await store.decide(request(user, 'consume', [amount('deployments', 1, 10), amount('api_calls', 1, 5)]))
    t.match(ok, { outcome: 'allowed', deniedIndex: -1, current: [M, 5 * M] })
  })

  t.test(`${name}: increment records without comparing; unlimited never denies`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    t.match(await store.decide(request(user, 'increment', [amount('compute_hours', 12, 10)])), { outcome: 'allowed', current: [12 * M] })
    t.match(await store.decide(request(user, 'consume', [amount('api_calls', 1e9, null)])), { outcome: 'allowed', current: [1e9 * M], limits: [null] })
  })

  t.test(`${name}: a total past MAX_TOTAL is refused and changes nothing (issue 11)`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    const max = MAX_TOTAL_MICRO
    t.equal(max, 9e15, 'the ceiling: 9e9 units, in micro-units below 2^53')
    for (let i = 0; i < 9; i++) {
      t.equal((await store.decide(request(user, 'increment', [amount('storage', 1e9)]))).outcome, 'allowed')
    }
    const full = await store.decide(request(user, 'check', [amount('storage', 0, null)]))
    t.same(full.current, [max], 'exactly the ceiling is allowed')
    const over = await store.decide(request(user, 'increment', [{ metric: 'storage', amount: 1, limit: null }]))
    t.match(over, { outcome: 'too-large', deniedIndex: 0, replayed: false }, 'one micro-unit past it: refused')
    const consumed = await store.decide(request(user, 'consume', [amount('api_calls', 1, null), amount('storage', 0.5, null)]))
    t.match(consumed, { outcome: 'too-large', deniedIndex: 1 }, 'a consume too; the metric over the ceiling is named')
    const idempotency = { key: 'big', fingerprint: 'increment|storage=1', context: { day: DAY, tier: 'free' } }
    t.match(await store.decide(request(user, 'increment', [{ metric: 'storage', amount: 1, limit: null }], { idempotency })),
      { outcome: 'too-large' }, 'with an idempotency key')
    const after = await store.decide(request(user, 'check', [amount('api_calls', 0, null), amount('storage', 0, null)]))
    t.same(after.current, [0, max], 'nothing of the refused calls was counted')
    t.match(await store.decide(request(user, 'increment', [amount('storage', -1)])), { outcome: 'allowed', current: [max - M] },
      'lowering the gauge still works')
    t.match(await store.decide(request(user, 'increment', [amount('storage', 1)], { idempotency: { ...idempotency, fingerprint: 'x' } })),
      { outcome: 'allowed', replayed: false }, 'the refused key was not stored: it is free for the call that fits')
    t.match(await store.decide(request(user, 'refund', [amount('storage', 1)])), { outcome: 'allowed' }, 'refunds are never refused')
  })

  t.test(`${name}: refunds and storage decrements never go below 0`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    await store.decide(request(user, 'consume', [amount('deployments', 2, 10)]))
    t.same((await store.decide(request(user, 'refund', [amount('deployments', 5)]))).current, [0])
    await store.decide(request(user, 'increment', [amount('storage', 1.5)]))
    t.same((await store.decide(request(user, 'increment', [amount('storage', -4)]))).current, [0])
  })

  t.test(`${name}: the storage gauge carries over days; daily counts start at 0`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    await store.decide(request(user, 'increment', [amount('storage', 2.5), amount('api_calls', 3)]))
    const nextDay = { day: '2026-11-29', now: NOON + 86_400_000 }
    const next = await store.decide(request(user, 'check', [amount('storage', 0, 5), amount('api_calls', 0, 5)], nextDay))
    t.same(next.current, [2.5 * M, 0])
  })

  t.test(`${name}: idempotency keys replay the first answer and count nothing`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    const idempotency = { key: 'job-1', fingerprint: 'consume|api_calls=2', context: { day: DAY, tier: 'free' } }
    const first = await store.decide(request(user, 'consume', [amount('api_calls', 2, 5)], { idempotency }))
    t.match(first, { outcome: 'allowed', replayed: false, current: [2 * M], context: { day: DAY, tier: 'free' } })
    const again = await store.decide(request(user, 'consume', [amount('api_calls', 2, 50)], {
      idempotency: { ...idempotency, context: { day: DAY, tier: 'pro' } },
    }))
    t.match(again, { outcome: 'allowed', replayed: true, current: [2 * M], limits: [5 * M], context: { day: DAY, tier: 'free' } },
      "the first call's numbers, limits and context")
    t.same((await store.decide(request(user, 'check', [amount('api_calls', 0, 5)]))).current, [2 * M], 'counted once')
    const other = await store.decide(request(user, 'consume', [amount('api_calls', 3, 5)], { idempotency: { ...idempotency, fingerprint: 'consume|api_calls=3' } }))
    t.equal(other.outcome, 'key-reused', 'the same key with other parameters is refused')
    const denial = { key: 'job-2', fingerprint: 'consume|api_calls=9', context: { day: DAY, tier: 'free' } }
    t.match(await store.decide(request(user, 'consume', [amount('api_calls', 9, 5)], { idempotency: denial })), { outcome: 'denied', replayed: false })
    await store.decide(request(user, 'refund', [amount('api_calls', 2)]))
    t.match(await store.decide(request(user, 'consume', [amount('api_calls', 9, 5)], { idempotency: denial })), { outcome: 'denied', replayed: true },
      'a denial stays a denial, even after room was made')
    const otherUser = await store.decide(request(newUserId(), 'consume', [amount('api_calls', 2, 5)], { idempotency }))
    t.equal(otherUser.replayed, false, 'keys are scoped to the user')
  })

  t.test(`${name}: reset zeroes the named metrics; storage also the gauge`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    await store.decide(request(user, 'increment', [amount('deployments', 3), amount('api_calls', 4), amount('storage', 2)]))
    await store.reset(user, DAY, NOON, ['deployments'])
    const all = [amount('deployments', 0, 10), amount('api_calls', 0, 10), amount('storage', 0, 10)]
    t.same((await store.decide(request(user, 'check', all))).current, [0, 4 * M, 2 * M])
    await store.reset(user, DAY, NOON, ['api_calls', 'storage'])
    t.same((await store.decide(request(user, 'check', all))).current, [0, 0, 0])
    await store.reset(newUserId(), DAY, NOON, ['deployments'])
    t.pass('a reset of a user never seen is harmless')
  })

  t.test(`${name}: dirty user-days are read with their state and acknowledged by version`, async (t) => {
    const { store } = await factory(t)
    const quiet = newUserId()
    const busy = newUserId()
    await store.decide(request(quiet, 'increment', [amount('api_calls', 1)]))
    await store.decide(request(busy, 'increment', [amount('api_calls', 1)]))
    await store.decide(request(busy, 'check', [amount('api_calls', 0, 5)]))
    const readAt = NOON + 5000
    const entries = await store.readDirty(100)
    t.same(entries.map((e) => e.userId).sort(), [quiet, busy].sort(), 'both changed user-days, once each')
    t.match(entries.find((e) => e.userId === busy), { day: DAY, since: NOON, state: { counts: { ...emptyCounts(), api_calls: M } } })
    t.equal(await store.oldestDirty(), NOON)
    await store.decide(request(busy, 'increment', [amount('api_calls', 1)], { now: NOON + 6000 }))
    let removed = 0
    for (const e of entries) removed += await store.acknowledge(e.bucket, [{ userId: e.userId, day: e.day, version: e.state?.version ?? 0 }], readAt)
    t.equal(removed, 1, 'only the unchanged user-day is taken off')
    const left = await store.readDirty(100)
    t.match(left, [{ userId: busy, since: readAt, state: { counts: { api_calls: 2 * M } } }], 'the changed one stays, dirty since the read')
    t.equal((await store.dirtyCounts()).reduce((a, b) => a + b, 0), 1)
    const again = left[0]
    if (again) await store.acknowledge(again.bucket, [{ userId: busy, day: DAY, version: again.state?.version ?? 0 }])
    t.same(await store.readDirty(100), [], 'all written')
    t.equal(await store.oldestDirty(), null)
  })

  t.test(`${name}: after losing its state, a store continues from the history, never from 0`, async (t) => {
    const sut = await factory(t)
    const user = newUserId()
    await sut.store.decide(request(user, 'consume', [amount('deployments', 7, 10), amount('storage', 3, 5)]))
    sut.history.set(`${user}:${DAY}`, { counts: { ...emptyCounts(), deployments: 7 * M, storage: 3 * M }, version: 2, gauge: 3 * M })
    await sut.loseState()
    const after = await sut.store.decide(request(user, 'consume', [amount('deployments', 4, 10)]))
    t.match(after, { outcome: 'denied', current: [7 * M] }, '7 + 4 > 10: the rebuilt count decides')
    const storage = await sut.store.decide(request(user, 'check', [amount('storage', 0, 5)]))
    t.same(storage.current, [3 * M], 'the gauge is rebuilt too')
    const ok = await sut.store.decide(request(user, 'consume', [amount('deployments', 3, 10)]))
    t.match(ok, { outcome: 'allowed', current: [10 * M] })
    const dirty = await sut.store.readDirty(100)
    t.ok(dirty.some((e) => e.userId === user && (e.state?.version ?? 0) > 2), 'the rebuilt day continues the recorded version')
  })

  t.test(`${name}: a history past MAX_TOTAL is rebuilt at the ceiling, never an error (issue 11)`, async (t) => {
    const sut = await factory(t)
    const user = newUserId()
    await sut.store.decide(request(user, 'increment', [amount('api_calls', 1)]))
    sut.history.set(`${user}:${DAY}`, { counts: { ...emptyCounts(), api_calls: 1e20, storage: 2 ** 60 }, version: 3, gauge: 2 ** 60 })
    await sut.loseState()
    const check = await sut.store.decide(request(user, 'check', [amount('api_calls', 0, null), amount('storage', 0, null)]))
    t.match(check, { outcome: 'allowed', current: [MAX_TOTAL_MICRO, MAX_TOTAL_MICRO] }, 'read at the ceiling')
    t.match(await sut.store.decide(request(user, 'increment', [amount('api_calls', 1)])), { outcome: 'too-large' })
    await sut.store.reset(user, DAY, NOON, ['api_calls', 'storage'])
    t.same((await sut.store.decide(request(user, 'check', [amount('api_calls', 0, null), amount('storage', 0, null)]))).current, [0, 0],
      'and a reset works')
  })

  t.test(`${name}: concurrent consumes at the boundary admit exactly the limit`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    const answers = await Promise.all(Array.from({ length: 300 }, () => store.decide(request(user, 'consume', [amount('deployments', 1, 50)]))))
    t.equal(answers.filter((a) => a.outcome === 'allowed').length, 50)
    t.same((await store.decide(request(user, 'check', [amount('deployments', 0, 50)]))).current, [50 * M])
  })

  t.test(`${name}: model test`, async (t) => {
    const sut = await factory(t)
    await runModelTest(t, sut.store)
  })
}

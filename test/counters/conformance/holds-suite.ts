/**
 * Conformance cases for reservations (holds) and threshold crossings: every store must give these
 * answers (invariants 9 and 10). Speaks only the CounterStore interface.
 */
import type { Test } from 'tap'
import type { CounterStore, DecisionRequest, HoldRequest, ThresholdCrossing } from '../../../src/counters/store.ts'
import { newUserId } from '../../helpers/usage.ts'
import { DAY, M, NOON, amount, request } from './suite.ts'
import type { StoreFactory } from './suite.ts'

const MINUTE = 60_000

function hold(id: string, expiresAt = NOON + 5 * MINUTE): HoldRequest {
  return { id, expiresAt }
}

function reserve(user: string, units: number, limit: number | null, id: string, extra: Partial<DecisionRequest> = {}): DecisionRequest {
  return request(user, 'reserve', [amount('compute_hours', units, limit)], { hold: hold(id), ...extra })
}

function settle(user: string, mode: 'commit' | 'cancel', units: number, limit: number | null, id: string, now = NOON): DecisionRequest {
  return request(user, mode, [amount('compute_hours', units, limit)], { hold: hold(id), now })
}

/** The user's crossings, by metric then threshold (crossings of one decision share their time). */
async function crossingsOf(store: CounterStore, user: string): Promise<ThresholdCrossing[]> {
  return (await store.readCrossings(1000)).filter((c) => c.userId === user)
    .sort((a, b) => a.at - b.at || a.metric.localeCompare(b.metric) || a.threshold - b.threshold || a.current - b.current)
}

export function runHoldConformance(t: Test, name: string, factory: StoreFactory): void {
  t.test(`${name}: a hold counts against the limit until committed; the actual is recorded`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    t.match(await store.decide(reserve(user, 6, 10, 'r1')), { outcome: 'allowed', current: [0], reserved: [6 * M] })
    t.match(await store.decide(request(user, 'consume', [amount('compute_hours', 5, 10)])), { outcome: 'denied', current: [0], reserved: [6 * M] },
      'used 0 + held 6 + 5 > 10')
    t.match(await store.decide(request(user, 'consume', [amount('compute_hours', 4, 10)])), { outcome: 'allowed', current: [4 * M] })
    t.match(await store.decide(reserve(user, 0.000001, 10, 'r2')), { outcome: 'denied' }, 'held + used at the limit: no new hold')
    const check = await store.decide(request(user, 'check', [amount('deployments', 0, 10), amount('compute_hours', 0, 10)]))
    t.same(check.reserved, [0, 6 * M], 'a check reports what is held per metric')
    const committed = await store.decide(settle(user, 'commit', 3, 10, 'r1'))
    t.match(committed, { outcome: 'allowed', replayed: false, held: 6 * M, current: [7 * M] }, 'the hold released, the actual recorded')
    t.equal(committed.reserved, undefined, 'nothing held any more')
    t.match(await store.decide(request(user, 'consume', [amount('compute_hours', 3, 10)])), { outcome: 'allowed', current: [10 * M] },
      'the part of the hold not used is free again')
    const dirty = (await store.readDirty(1000)).find((d) => d.userId === user)
    t.equal(dirty?.state?.counts.compute_hours, 10 * M, 'the history sees usage, never holds')
  })

  t.test(`${name}: commit more than held, commit twice, cancel, conflicts and unknown ids`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    await store.decide(reserve(user, 2, 10, 'big'))
    t.match(await store.decide(settle(user, 'commit', 12, 10, 'big')), { outcome: 'allowed', held: 2 * M, current: [12 * M] },
      'more than held is recorded: the work happened')
    t.match(await store.decide(settle(user, 'commit', 1, 10, 'big')), { outcome: 'allowed', replayed: true, held: 2 * M, committed: 12 * M, current: [12 * M] },
      'a second commit replays the first answer and records nothing')
    t.match(await store.decide(settle(user, 'cancel', 0, 10, 'big')), { outcome: 'conflict' }, 'a committed hold cannot be cancelled')
    t.match(await store.decide(settle(user, 'commit', 1, 10, 'nope')), { outcome: 'not-found' })
    t.match(await store.decide(settle(newUserId(), 'commit', 1, 10, 'big')), { outcome: 'not-found' }, "another user's reservation is not found")

    const other = newUserId()
    await store.decide(reserve(other, 3, 10, 'c1'))
    t.match(await store.decide(settle(other, 'cancel', 0, 10, 'c1')), { outcome: 'allowed', held: 3 * M, current: [0] })
    t.match(await store.decide(settle(other, 'cancel', 0, 10, 'c1')), { outcome: 'allowed', replayed: true, held: 3 * M })
    t.match(await store.decide(settle(other, 'commit', 1, 10, 'c1')), { outcome: 'conflict' }, 'a cancelled hold cannot be committed')
    t.same((await store.decide(request(other, 'check', [amount('compute_hours', 0, 10)]))).current, [0], 'a cancel records nothing')
  })

  t.test(`${name}: a hold lapses by itself at its expiry`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    await store.decide(request(user, 'reserve', [amount('compute_hours', 8, 10)], { hold: hold('short', NOON + MINUTE) }))
    t.match(await store.decide(request(user, 'consume', [amount('compute_hours', 3, 10)], { now: NOON + MINUTE - 1 })), { outcome: 'denied' })
    const later = await store.decide(request(user, 'consume', [amount('compute_hours', 3, 10)], { now: NOON + MINUTE }))
    t.match(later, { outcome: 'allowed', current: [3 * M] }, 'released at its expiry')
    t.equal(later.reserved, undefined)
    t.match(await store.decide(settle(user, 'commit', 1, 10, 'short', NOON + MINUTE + 1)), { outcome: 'not-found' }, 'a lapsed hold is gone')
  })

  t.test(`${name}: an idempotent reserve replays the first reservation`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    const idem = (id: string): DecisionRequest['idempotency'] => ({ key: 'job-1', fingerprint: 'reserve:compute_hours:2', context: { day: DAY, tier: 'free', hold: hold(id) } })
    const first = await store.decide(reserve(user, 2, 10, 'first', { idempotency: idem('first') }))
    const again = await store.decide(reserve(user, 2, 10, 'second', { idempotency: idem('second'), hold: hold('second') }))
    t.match(again, { outcome: 'allowed', replayed: true, context: { hold: { id: 'first' } } })
    t.match(first, { reserved: [2 * M] })
    t.same((await store.decide(request(user, 'check', [amount('compute_hours', 0, 10)]))).reserved, [2 * M], 'held once')
  })

  t.test(`${name}: refused reservation requests change nothing`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    await t.rejects(store.decide(request(user, 'reserve', [amount('storage', 1, 5)], { hold: hold('s') })), TypeError, 'the gauge is not reservable')
    await t.rejects(store.decide(request(user, 'reserve', [amount('compute_hours', 1, 5)])), TypeError, 'a reserve needs its reservation')
    await t.rejects(store.decide(request(user, 'reserve', [amount('compute_hours', 1, 5)], { hold: hold('bad id!') })), TypeError)
    await t.rejects(store.decide(request(user, 'reserve', [amount('compute_hours', 1, 5)], { hold: hold('past', NOON) })), TypeError)
    await t.rejects(store.decide(request(user, 'consume', [amount('compute_hours', 1, 5)], { hold: hold('x') })), TypeError)
  })

  t.test(`${name}: 200 concurrent reservations at the limit: exactly as many holds as fit`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => store.decide(reserve(user, 0.1, 10, `job-${i}`))))
    const held = answers.map((a, i) => ({ a, i })).filter(({ a }) => a.outcome === 'allowed')
    t.equal(held.length, 100, '100 holds of 0.1 fit in 10')
    t.equal(answers.filter((a) => a.outcome === 'denied').length, 100)
    // Commit half of them at half their estimate: 50 x 0.05 freed for new holds.
    for (const { i } of held.slice(0, 50)) await store.decide(settle(user, 'commit', 0.05, 10, `job-${i}`))
    const more = await Promise.all(Array.from({ length: 60 }, (_, i) => store.decide(reserve(user, 0.05, 10, `more-${i}`))))
    t.equal(more.filter((a) => a.outcome === 'allowed').length, 50, 'the unused part of committed holds is free again')
  })

  t.test(`${name}: threshold crossings are reported once each, re-armed under the threshold`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    await store.decide(request(user, 'consume', [amount('deployments', 7, 10)]))
    t.same(await crossingsOf(store, user), [], 'under 80 %: nothing')
    await store.decide(request(user, 'consume', [amount('deployments', 1, 10)]))
    await store.decide(request(user, 'consume', [amount('deployments', 1, 10)]))
    await store.decide(request(user, 'consume', [amount('deployments', 1, 10)]))
    const crossed = await crossingsOf(store, user)
    t.match(crossed, [
      { metric: 'deployments', threshold: 80, current: 8 * M, limit: 10 * M, day: DAY, at: NOON },
      { metric: 'deployments', threshold: 100, current: 10 * M, limit: 10 * M, day: DAY },
    ], '80 % at 8, 100 % at 10, once each')
    t.equal(crossed.length, 2)
    const bucket = (crossed[0] as ThresholdCrossing).bucket
    t.equal(await store.acknowledgeCrossings(bucket, crossed.map((c) => c.ref)), 2)
    t.same(await crossingsOf(store, user), [], 'acknowledged crossings are gone')

    await store.reset(user, DAY, NOON, ['deployments'])
    await store.decide(request(user, 'consume', [amount('deployments', 9, 10)]))
    t.match(await crossingsOf(store, user), [{ threshold: 80, current: 9 * M }], 'a reset re-arms the thresholds')

    const both = newUserId()
    await store.decide(request(both, 'increment', [amount('compute_hours', 12.5, 10)]))
    t.same((await crossingsOf(store, both)).map((c) => `${c.metric}:${c.threshold}:${c.current / M}`).sort(),
      ['compute_hours:100:12.5', 'compute_hours:80:12.5'], 'one increment past both thresholds reports both')

    const upgraded = newUserId()
    await store.decide(request(upgraded, 'consume', [amount('deployments', 8, 10)]))
    await store.decide(request(upgraded, 'consume', [amount('deployments', 32, 50)]))
    t.match(await crossingsOf(store, upgraded), [{ threshold: 80, current: 8 * M, limit: 10 * M }, { threshold: 80, current: 40 * M, limit: 50 * M }],
      'a raised limit moves the threshold: one decision from under it to past it crosses again')

    const unlimited = newUserId()
    await store.decide(request(unlimited, 'consume', [amount('api_calls', 1e6, null), amount('storage', 100, 5)]))
    await store.decide(request(unlimited, 'check', [amount('deployments', 11, 10)]))
    t.same(await crossingsOf(store, unlimited), [], 'unlimited metrics, the gauge and checks raise nothing')
  })

  t.test(`${name}: 300 concurrent consumes cross each threshold exactly once`, async (t) => {
    const { store } = await factory(t)
    const user = newUserId()
    const answers = await Promise.all(Array.from({ length: 300 }, () => store.decide(request(user, 'consume', [amount('api_calls', 1, 250)]))))
    t.equal(answers.filter((a) => a.outcome === 'allowed').length, 250)
    const crossed = await crossingsOf(store, user)
    t.same(crossed.map((c) => [c.threshold, c.current / M]).sort((a, b) => (a[0] as number) - (b[0] as number)), [[80, 200], [100, 250]])
  })
}

/**
 * The memory store's side of reservations that needs a user-day: what a day holds per metric, and
 * settling a hold (commit or cancel). The holds themselves are in holds.ts.
 */
import { MAX_TOTAL_MICRO } from '../../metrics.ts'
import type { DecisionAnswer, DecisionRequest, HoldRequest, MetricAmount } from '../store.ts'
import { INDEX } from './user-state.ts'
import type { DayState } from './user-state.ts'

/** Held per metric in request order (0 for the gauge), or undefined when the day holds nothing. */
export function reservedOf(day: DayState | undefined, metrics: readonly MetricAmount[]): number[] | undefined {
  const holds = day?.holds
  if (holds === undefined || !holds.holding) return undefined
  return metrics.map((m) => (m.metric === 'storage' ? 0 : holds.held[INDEX[m.metric] as 0 | 1 | 2]))
}

/**
 * A commit or cancel of a reservation of `day`: releases the hold and, for a commit, adds the
 * actual amount through `apply` (which updates `current`, the metric's value before it, in place).
 */
export function settleHold(
  req: DecisionRequest, day: DayState | undefined, apply: (day: DayState, current: number[]) => void,
): DecisionAnswer {
  const metric = req.metrics[0] as MetricAmount
  const action = req.mode === 'commit' ? 'commit' : 'cancel'
  const context = req.idempotency?.context
  const refused = (outcome: 'not-found' | 'conflict' | 'too-large'): DecisionAnswer =>
    ({ outcome, replayed: false, deniedIndex: outcome === 'too-large' ? 0 : -1, context, current: [], limits: [] })
  const holds = day?.holds
  holds?.expire(req.now)
  const index = INDEX[metric.metric] as 0 | 1 | 2
  const hold = holds?.records.get((req.hold as HoldRequest).id)
  if (day === undefined || holds === undefined || hold === undefined || hold.index !== index) return refused('not-found')
  if (hold.settled !== undefined) {
    if (hold.settled.action !== action) return refused('conflict')
    const first = hold.settled.answer
    const repeat: DecisionAnswer = { ...first, replayed: true, current: first.current.slice(), limits: first.limits.slice() }
    if (first.reserved === undefined) delete repeat.reserved
    else repeat.reserved = first.reserved.slice()
    return repeat
  }
  const current = [day.counts[index]]
  if (action === 'commit' && metric.amount > 0 && (current[0] as number) + metric.amount > MAX_TOTAL_MICRO) return refused('too-large')
  if (action === 'commit') apply(day, current)
  const answer: DecisionAnswer = { outcome: 'allowed', replayed: false, deniedIndex: -1, context, current, limits: [metric.limit], held: hold.amount }
  if (action === 'commit') answer.committed = metric.amount
  holds.release(hold)
  const reserved = reservedOf(day, req.metrics)
  if (reserved !== undefined) answer.reserved = reserved
  // A repeat answers as this one did: the values, and what stayed held then.
  const kept: DecisionAnswer = { ...answer, current: current.slice(), limits: [metric.limit] }
  if (reserved !== undefined) kept.reserved = reserved.slice()
  hold.settled = { action, answer: kept }
  return answer
}

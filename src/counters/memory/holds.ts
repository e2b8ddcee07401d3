/**
 * Reservations of one user-day in the memory store: what each open hold keeps back, the sums per
 * daily metric, and the answers of settled ones (a second commit or cancel replays the first).
 * Holds lapse without a sweeper: the first call that looks at the day after the earliest expiry
 * releases every lapsed hold (`expire`), as the Redis store's decide.lua does; a lapsed hold is
 * gone (a commit finds nothing). Settled records live as long as their day state.
 */
import { MAX_TOTAL_MICRO } from '../../metrics.ts'
import type { DecisionAnswer, DecisionRequest, HoldRequest, MetricAmount } from '../store.ts'
import { INDEX } from './user-state.ts'
import type { DayState } from './user-state.ts'

export interface Hold {
  /** Daily metric, registry index 0-2. */
  index: number
  amount: number
  expiresAt: number
  /** Set once committed or cancelled: the answer a repeat replays. */
  settled?: { action: 'commit' | 'cancel'; answer: DecisionAnswer }
}

export class DayHolds {
  /** Micro-units held by open holds per daily metric (registry order). */
  readonly held: [number, number, number] = [0, 0, 0]
  readonly records = new Map<string, Hold>()
  /** Earliest expiry of an open hold (Infinity: none). */
  #due = Infinity

  /** Releases every open hold lapsed at `now`. */
  expire(now: number): void {
    if (this.#due > now) return
    let due = Infinity
    for (const [id, hold] of this.records) {
      if (hold.settled !== undefined) continue
      if (hold.expiresAt <= now) {
        this.held[hold.index as 0 | 1 | 2] -= hold.amount
        this.records.delete(id)
      } else if (hold.expiresAt < due) {
        due = hold.expiresAt
      }
    }
    this.#due = due
  }

  add(id: string, index: number, amount: number, expiresAt: number): void {
    this.records.set(id, { index, amount, expiresAt })
    this.held[index as 0 | 1 | 2] += amount
    if (expiresAt < this.#due) this.#due = expiresAt
  }

  /** Releases an open hold (the caller then records how it was settled). */
  release(hold: Hold): void {
    this.held[hold.index as 0 | 1 | 2] -= hold.amount
  }

  /** Whether any hold is open (after `expire`). */
  get holding(): boolean {
    return this.held[0] > 0 || this.held[1] > 0 || this.held[2] > 0
  }
}

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

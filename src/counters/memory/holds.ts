/**
 * Reservations of one user-day in the memory store: what each open hold keeps back, the sums per
 * daily metric, and the answers of settled ones (a second commit or cancel replays the first).
 * Holds lapse without a sweeper: the first call that looks at the day after the earliest expiry
 * releases every lapsed hold (`expire`), as the Redis store's decide.lua does; a lapsed hold is
 * gone (a commit finds nothing). Settled records live as long as their day state.
 */
import type { DecisionAnswer } from '../store.ts'

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

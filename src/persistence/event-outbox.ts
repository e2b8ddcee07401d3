/**
 * Counter store -> usage_events: the flusher's step for threshold events (docs/events.md). The
 * store records each crossing inside the decision that made it and keeps it until told the
 * history has it. Each step reads a bounded number of crossings per bucket, inserts them in one
 * statement, and only once that has committed acknowledges them. Nothing is lost: a crash in
 * between leaves them in the store, the next step inserts them again and the table's unique
 * indexes make that a no-op.
 *
 * A crossing of a user missing from `users` (deleted meanwhile: users are created before their
 * first decision) is logged and acknowledged rather than failing the batch forever.
 */
import type { Logger } from 'pino'
import type { CounterStore, ThresholdCrossing } from '../counters/store.ts'
import type { Pool } from '../db/client.ts'
import { decimalText } from '../db/daily-usage.ts'
import { insertEvents } from '../db/usage-events.ts'
import { mapLimited } from '../limited.ts'

/** The calls the outbox makes to the telemetry seam (the engine passes its Telemetry). */
export interface EventTelemetry {
  /** `count` threshold events recorded for `threshold` (80 or 100). */
  thresholdEvents(threshold: 80 | 100, count: number): void
}

export interface EventOutboxOptions {
  store: CounterStore
  pool: Pool
  logger?: Pick<Logger, 'warn'> | undefined
  telemetry?: EventTelemetry | undefined
}

export interface CopyResult {
  /** Crossings read from the store. */
  read: number
  /** Events recorded (crossings already recorded, or of a day with a live event, add none). */
  inserted: number
  /** Crossings taken off the store. */
  acked: number
}

/** Acknowledgements (one store call per bucket) in flight at once. */
const ACKS_IN_FLIGHT = 2
/** Steps copyAll makes at most (each is bounded). */
const MAX_STEPS = 1000

export class EventOutbox {
  readonly #options: EventOutboxOptions
  /** Serialises steps within the process (flush passes and the admin's copies). */
  #current: Promise<unknown> = Promise.resolve()
  /** Users already reported missing (once each). */
  readonly #missing = new Set<string>()

  constructor(options: EventOutboxOptions) {
    this.#options = options
  }

  /** One step: up to `maxPerBucket` crossings of every bucket. */
  copy(maxPerBucket: number): Promise<CopyResult> {
    const run = this.#current.catch(() => {}).then(() => this.#step(maxPerBucket))
    this.#current = run
    return run
  }

  /** Steps until the store holds no crossing: after it, usage_events has every crossing made so far. */
  async copyAll(maxPerBucket = 256): Promise<CopyResult> {
    const total: CopyResult = { read: 0, inserted: 0, acked: 0 }
    for (let i = 0; i < MAX_STEPS; i++) {
      const r = await this.copy(maxPerBucket)
      total.read += r.read
      total.inserted += r.inserted
      total.acked += r.acked
      if (r.read === 0 || r.acked === 0) break
    }
    return total
  }

  async #step(maxPerBucket: number): Promise<CopyResult> {
    const { store, pool, telemetry } = this.#options
    const crossings = await store.readCrossings(maxPerBucket)
    if (crossings.length === 0) return { read: 0, inserted: 0, acked: 0 }
    const { inserted, missingUsers } = await insertEvents(pool, crossings.map((c) => ({
      userId: c.userId,
      metric: c.metric,
      day: c.day,
      threshold: c.threshold,
      current: decimalText(c.current),
      limit: decimalText(c.limit),
      at: c.at,
    })))
    if (inserted[80] > 0) telemetry?.thresholdEvents(80, inserted[80])
    if (inserted[100] > 0) telemetry?.thresholdEvents(100, inserted[100])
    this.#reportMissing(missingUsers, crossings)
    // Committed: the store may forget them now.
    const byBucket = new Map<number, string[]>()
    for (const c of crossings) {
      const refs = byBucket.get(c.bucket) ?? []
      refs.push(c.ref)
      byBucket.set(c.bucket, refs)
    }
    const acks = await mapLimited([...byBucket], ACKS_IN_FLIGHT, ([bucket, refs]) => store.acknowledgeCrossings(bucket, refs))
    return { read: crossings.length, inserted: inserted[80] + inserted[100], acked: acks.reduce((a, b) => a + b, 0) }
  }

  #reportMissing(missingUsers: readonly string[], crossings: readonly ThresholdCrossing[]): void {
    for (const userId of missingUsers) {
      if (this.#missing.has(userId)) continue
      if (this.#missing.size < 10_000) this.#missing.add(userId)
      const dropped = crossings.filter((c) => c.userId === userId).map((c) => `${c.metric}@${c.threshold} ${c.day}`)
      this.#options.logger?.warn({ userId, crossings: dropped }, 'threshold crossings of a user missing from users: not recorded')
    }
  }
}

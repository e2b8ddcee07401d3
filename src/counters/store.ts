/**
 * The CounterStore: what the usage service, the flusher and the midnight job need from the place
 * counters live. It knows users, UTC days, metrics and integer micro-units — never tiers, HTTP or
 * Postgres. Every implementation gives the same answers to the same calls (the conformance suite
 * in test/counters/conformance runs against each); docs/architecture.md describes the Redis one.
 *
 * Failures: a store that cannot decide now (unreachable, timed out, its state could not be
 * rebuilt) rejects with CounterUnavailableError, and the caller's fail mode applies. A denial is
 * an answer, never an error.
 */
import type { MetricName } from '../metrics.ts'

export { CounterUnavailableError } from './errors.ts'

/**
 * check: compare, change nothing. consume: compare every metric, then add all or none.
 * increment: add without comparing (actual usage). refund: subtract (never below 0).
 * Reservations (one daily metric, `hold` names it): reserve: compare used + held + amount with
 * the limit, then hold the amount until `hold.expiresAt` (nothing is used); commit: release the
 * hold and add `amount` without comparing (the work happened); cancel: release the hold. Check
 * and consume compare used + held: a hold counts against the limit while it lasts.
 */
export type DecisionMode = 'check' | 'consume' | 'increment' | 'refund' | 'reserve' | 'commit' | 'cancel'

/** The reservation a reserve, commit or cancel is about. */
export interface HoldRequest {
  /** Unique per user-day; made by the caller (the service) for a reserve. */
  id: string
  /** reserve: when the hold lapses, ms on the requests' clock (a later request's `now` past it finds it gone). */
  expiresAt: number
}

/** Counts of one user-day in micro-units, one per metric (storage: the gauge's value that day). */
export type MetricCounts = Record<MetricName, number>

export interface MetricAmount {
  metric: MetricName
  /** Micro-units; negative only to lower the storage gauge (deleted data). */
  amount: number
  /** Micro-units; null = unlimited. Only check and consume compare against it. */
  limit: number | null
}

/** What an idempotent answer remembers besides its numbers, so a replay answers as the first call did. */
export interface AnswerContext {
  /** The UTC day the first call counted for. */
  day: string
  /** The tier the first call was decided with. */
  tier: string
  /** A reserve's reservation: a replay hands back the first call's. */
  hold?: HoldRequest
}

export interface IdempotencyRequest {
  /**
   * 1–128 printable ASCII characters, scoped to the user; kept 24 h. A store bounds how many keys
   * one user holds at once: a call that would store one more is refused (`too-many-keys`).
   */
  key: string
  /** Identifies the call's parameters: the same key with other parameters is refused (`key-reused`). */
  fingerprint: string
  context: AnswerContext
}

export interface DecisionRequest {
  mode: DecisionMode
  /** Lower-case UUID. */
  userId: string
  /** UTC day `YYYY-MM-DD` the decision counts for. */
  day: string
  /** Decision time, ms (from the injectable clock): dirty marks and key lifetimes use it. */
  now: number
  /** One or more metrics, in registry order; a denial names the first one over its limit. */
  metrics: MetricAmount[]
  idempotency?: IdempotencyRequest
  /** reserve, commit, cancel: the reservation (exactly one daily metric in `metrics`; its day is `day`). */
  hold?: HoldRequest
}

export interface DecisionAnswer {
  /**
   * allowed: admitted (and applied unless checking); denied: nothing changed; key-reused: refused.
   * too-large: a consume or increment that would be admitted would take a metric past MAX_TOTAL
   * (`deniedIndex` names it; over a limit is a denial first); too-many-keys: the user holds as many idempotency keys as the store allows. Both change
   * nothing and store nothing under the key. Commit and cancel: not-found when the user-day holds
   * no such reservation (never made, expired, or lost with the store's state); conflict when it was
   * settled the other way (a commit of a cancelled one, a cancel of a committed one). A second
   * commit (or cancel) of the same reservation replays the first one's answer.
   */
  outcome: 'allowed' | 'denied' | 'key-reused' | 'too-large' | 'too-many-keys' | 'not-found' | 'conflict'
  /** Replayed from the idempotency key: nothing was counted now. */
  replayed: boolean
  /** Index into `metrics` of the first denied metric (too-large: the one over the ceiling), -1 when none. */
  deniedIndex: number
  /** too-many-keys: ms until the user's oldest idempotency key expires (room for a new one). */
  retryAfterMs?: number
  /** The first call's context on a replay; the request's own otherwise (undefined without a key). */
  context: AnswerContext | undefined
  /** Values after the call (before it when denied or checked), micro-units; empty when key-reused. */
  current: number[]
  /** Limits the decision used (a replay: the first call's), micro-units; null = unlimited. */
  limits: (number | null)[]
  /**
   * Held by open reservations per metric after the call, micro-units, in request order (0 for the
   * gauge); undefined when nothing is held (and on replays — except a settled reservation's, which
   * repeats what stayed held then — not-found and refusals).
   */
  reserved?: number[]
  /** Commit and cancel: the amount the reservation held. */
  held?: number
  /** Commit: the amount recorded (on a replay, the first commit's). */
  committed?: number
}

/** A user-day as the history (daily_usage) remembers it, to rebuild a store that lost its state. */
export interface SeedState {
  counts: MetricCounts
  /** Version of the stored row: a rebuilt state continues from it, so later flushes overwrite. */
  version: number
  /** The storage gauge as it stands (the latest recorded value up to that day). */
  gauge: number
}

/** Reads a user-day from the history; the store calls it only after losing that user's state. */
export type SeedLoader = (userId: string, day: string) => Promise<SeedState>

/** A user-day changed since it was last written to the history. */
export interface DirtyUserDay {
  /** The store's partition holding it: acknowledgements go per partition. */
  bucket: number
  userId: string
  day: string
  /** When its oldest unwritten change happened (ms). */
  since: number
  /** Its counts and version now, or null when the day is gone (expired): nothing left to write. */
  state: { counts: MetricCounts; version: number } | null
}

/**
 * An idempotent answer as the store keeps it, to be kept by the history too: after the store
 * loses its state, a retried call with the same key must still replay it, not count again.
 * `answer` is the store's own encoding, opaque to everyone else.
 */
export interface KeptAnswer {
  answer: string
  /** When the key is forgotten (ms): 24 h after its first call. */
  expiresAt: number
}

/** An idempotency key whose answer is not yet in the history. */
export interface PendingKey {
  bucket: number
  userId: string
  key: string
  /** Null when the key has expired meanwhile: nothing left to keep. */
  kept: KeptAnswer | null
}

/** Reads a kept answer from the history; the store asks only after it lost state recently. */
export type KeyLoader = (userId: string, key: string) => Promise<KeptAnswer | undefined>

/**
 * A daily metric of a user reaching 80 % or 100 % of its limit on a day (threshold events). The
 * decision that takes the metric there records it in the same atomic step; the flusher copies it
 * to the history (`usage_events`, one row per user, metric, day and threshold) and then
 * acknowledges it. A store may report a crossing again (after a refund took the metric back under
 * the threshold, a raised limit, a reset, or a store that lost its state): the history keeps one.
 */
export interface ThresholdCrossing {
  /** The store's partition holding it: acknowledgements go per partition. */
  bucket: number
  /** The store's own name for it, handed back to acknowledgeCrossings. */
  ref: string
  userId: string
  /** UTC day of the decision. */
  day: string
  /** A daily metric (the storage gauge raises none). */
  metric: MetricName
  /** Percent of the limit: 80 or 100. */
  threshold: 80 | 100
  /** The metric's value right after the decision, micro-units. */
  current: number
  /** The limit in force, micro-units (an unlimited metric raises none). */
  limit: number
  /** When the decision ran (ms, its `now`). */
  at: number
}

/** A user-day written to the history at `version`. */
export interface WrittenUserDay {
  userId: string
  day: string
  version: number
}

export interface CounterStore {
  /**
   * One decision, atomic on its own. Implementations may batch concurrent calls into fewer round
   * trips; each still sees the state the ones before it left.
   */
  decide(request: DecisionRequest): Promise<DecisionAnswer>
  /** Zeroes `metrics` of a user's day (storage: also the gauge). Marks the user-day dirty. */
  reset(userId: string, day: string, now: number, metrics: readonly MetricName[]): Promise<void>
  /** Up to `maxPerBucket` dirty user-days of every bucket, oldest first, with their state. */
  readDirty(maxPerBucket: number): Promise<DirtyUserDay[]>
  /**
   * Takes written user-days of one bucket off the dirty marks, unless they changed since their
   * `version`: those stay, marked dirty since `readAt`. Returns how many were taken off.
   */
  acknowledge(bucket: number, written: readonly WrittenUserDay[], readAt?: number): Promise<number>
  /**
   * Up to `maxPerBucket` idempotency keys per bucket whose answers are not in the history yet.
   * The flusher writes them before the user-days it read just before: a count in the history
   * never goes without the answer that counted it.
   */
  readPendingKeys(maxPerBucket: number): Promise<PendingKey[]>
  /** Marks keys of one bucket as kept by the history. Returns how many were marked. */
  acknowledgeKeys(bucket: number, keys: readonly { userId: string; key: string }[]): Promise<number>
  /** Up to `maxPerBucket` threshold crossings per bucket not yet copied to the history, oldest first. */
  readCrossings(maxPerBucket: number): Promise<ThresholdCrossing[]>
  /** Takes crossings of one bucket (by `ref`) off the store once the history has them. Returns how many. */
  acknowledgeCrossings(bucket: number, refs: readonly string[]): Promise<number>
  /** Time (ms) of the oldest unwritten change, or null when everything is written. */
  oldestDirty(): Promise<number | null>
  /** Dirty user-days per bucket. */
  dirtyCounts(): Promise<number[]>
  /** Resolves when the store can decide now; rejects with the reason otherwise (readiness). */
  ping(): Promise<void>
  /** Starts background work (clock sync, extra connections). */
  start(): Promise<void>
  /** Stops background work and closes what the store opened itself. */
  close(): Promise<void>
}

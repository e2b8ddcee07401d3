/**
 * What the usage service answers: plain values in display units (9.8, never micro-units).
 * "Over the limit" is an answer (`allowed: false`), never a thrown error.
 */
import type { MetricName, MetricPeriod } from '../metrics.ts'

export interface MetricState {
  current: number
  /** null = unlimited. */
  limit: number | null
  /** null = unlimited. */
  remaining: number | null
  unit: string
  period: MetricPeriod
  /** Held by open reservations (status only; counts against the limit). */
  reserved?: number
}

export interface Decision {
  allowed: boolean
  /** Why it was denied ("Daily deployments limit exceeded"); null when allowed. */
  reason: string | null
  metric: MetricName
  amount: number
  /** Usage before this request (a check changes nothing); null when Redis was unavailable (fail open). */
  current: number | null
  limit: number | null
  remaining: number | null
  tier: string
  /** ISO time the metric resets (next UTC midnight); null for the storage gauge. */
  resetsAt: string | null
  /** Set when the answer was given without Redis (USAGE_FAIL_MODE=open). */
  degraded?: boolean
}

export interface ConsumedMetric extends Omit<MetricState, 'current' | 'remaining'> {
  amount: number
  /** null when Redis was unavailable (fail open). */
  current: number | null
  remaining: number | null
}

/**
 * The answer of a consume or increment. Read-only: a denial remembered by the deny cache is one
 * frozen object handed to every caller while it is remembered.
 */
export interface ConsumeResult {
  readonly allowed: boolean
  readonly reason: string | null
  /** The first denied metric in registry order, or null. */
  readonly deniedMetric: MetricName | null
  readonly tier: string
  /** The UTC day the amounts counted for (refunds go to the same day). */
  readonly day: string
  /** When allowed: values after the call; when denied: values before it. */
  readonly metrics: Readonly<Partial<Record<MetricName, Readonly<ConsumedMetric>>>>
  /** Earliest reset among the requested metrics (ISO), null if only the gauge. */
  readonly resetsAt: string | null
  /** The answer of an earlier call with the same idempotency key; nothing was counted now. */
  readonly replayed: boolean
  readonly degraded?: boolean
}

export interface UsageStatus {
  user_id: string
  tier: string
  date: string
  resets_at: string
  metrics: Record<MetricName, MetricState>
}

export interface ResetSummary {
  date: string
  user_id: string | null
  metrics: MetricName[]
  /** Users whose counters were zeroed. */
  users_reset: number
  /** daily_usage rows this reset zeroed (a row a flush rewrote meanwhile is left to the flusher). */
  rows_updated: number
  /**
   * Every user of the scope was reset and daily_usage has their zeros. False: see `users_failed`
   * and `persisted`; the same reset again finishes it (a reset is idempotent).
   */
  complete: boolean
  /** Users whose counters could not be zeroed (nothing of theirs changed), the first 100 ids. */
  users_failed: string[]
  /** How many users could not be zeroed (`users_failed` may list fewer). */
  users_failed_count: number
  /**
   * daily_usage was brought up to date in this call. False when Postgres failed after the counters
   * were zeroed: the flusher writes the zeros on its next pass, or a retry does.
   */
  persisted: boolean
}

export type Amounts = Partial<Record<MetricName, number>>

export interface CallOptions {
  /** 1–128 printable ASCII characters; a repeat within 24 h replays the first answer. */
  idempotencyKey?: string
}

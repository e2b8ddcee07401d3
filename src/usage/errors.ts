/**
 * Infrastructure failures of the usage service, and the refusals that are not denials, as Error
 * subclasses classified in one place. "Over the limit" is not here: a denial is an ordinary
 * answer (a Decision value), not an error.
 */
import { InvalidAmountError, MAX_TOTAL, METRICS } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'

/** Redis could not be reached (down, paused, timed out) and the fail mode is `closed`. */
export class UsageUnavailableError extends Error {
  override name = 'UsageUnavailableError'
  /**
   * For a Fastify app using the plugin without quota's error handler: Fastify answers an error
   * with its `statusCode`, so the guard's "cannot decide now" is a 503 there too, not a 500.
   */
  readonly statusCode = 503
  constructor(message = 'Usage tracking is temporarily unavailable', options?: { cause?: unknown }) {
    super(message, options)
  }
}

/** A tier named by a caller does not exist in usage_limits (raised by the db layer). */
export { UnknownTierError } from '../db/errors.ts'

/** An idempotency key reused with other parameters than its first call's. */
export class IdempotencyConflictError extends Error {
  override name = 'IdempotencyConflictError'
  constructor() {
    super('This idempotency_key was already used with different parameters')
  }
}

/**
 * A consume or increment that would take a metric's total past MAX_TOTAL, the largest total every
 * layer holds exactly. Bad input (a 400 naming the field): nothing was counted.
 */
export class TotalTooLargeError extends InvalidAmountError {
  override name = 'TotalTooLargeError'
  /** The maximum, in the metric's unit. */
  readonly maximum = MAX_TOTAL
  constructor(readonly metric: MetricName, field: string) {
    super(
      `${field} would take ${metric} past its maximum total of ${MAX_TOTAL} ${METRICS[metric].unit}`
        + (METRICS[metric].period === 'day' ? ' per day' : ''),
      field,
    )
  }
}

/**
 * The user holds as many idempotency keys (each kept 24 h) as the service allows: a call that
 * would store one more is refused and counts nothing. Replays of held keys and calls without a
 * key still work.
 */
export class IdempotencyKeyLimitError extends Error {
  override name = 'IdempotencyKeyLimitError'
  constructor(
    /** Seconds until the oldest held key expires, making room for a new one. */
    readonly retryAfterSeconds: number,
  ) {
    super('This user holds the most idempotency keys allowed at once (each is kept 24 h); retry later, or send the call without idempotency_key')
  }
}

/** A commit or cancel of a reservation the user does not hold: never made, another user's, lapsed, or lost. */
export class ReservationNotFoundError extends Error {
  override name = 'ReservationNotFoundError'
  readonly statusCode = 404
  constructor(readonly reservationId: string) {
    super('No open reservation with this id: it is unknown, expired, or belongs to another user')
  }
}

/** A commit of a cancelled reservation, or a cancel of a committed one. */
export class ReservationSettledError extends Error {
  override name = 'ReservationSettledError'
  readonly statusCode = 409
  constructor(readonly reservationId: string, action: 'commit' | 'cancel') {
    super(action === 'commit' ? 'This reservation was cancelled: it cannot be committed' : 'This reservation was committed: it cannot be cancelled')
  }
}

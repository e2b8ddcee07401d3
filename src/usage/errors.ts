/**
 * Infrastructure failures of the usage service, as Error subclasses classified in one place.
 * "Over the limit" is not here: a denial is an ordinary answer (a Decision value), not an error.
 */

/** Redis could not be reached (down, paused, timed out) and the fail mode is `closed`. */
export class UsageUnavailableError extends Error {
  override name = 'UsageUnavailableError'
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

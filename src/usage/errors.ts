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

/** A tier named by a caller does not exist in usage_limits. */
export class UnknownTierError extends Error {
  override name = 'UnknownTierError'
  constructor(readonly tier: string) {
    super(`Unknown tier "${tier}"`)
  }
}

/**
 * How a counter store fails: CounterUnavailableError means "the store cannot decide now" (the
 * fail mode applies); any other error is a bug (a script error, say) and surfaces as one.
 */

/** The store cannot decide now: unreachable, timed out, loading, read-only replica... */
export class CounterUnavailableError extends Error {
  override name = 'CounterUnavailableError'
}

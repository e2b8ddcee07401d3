/**
 * How the counter store fails: CounterUnavailableError means "Redis cannot decide now" (the fail
 * mode applies); any other error is a bug (a script error, say) and surfaces as one.
 */
import { ReplyError } from 'ioredis'

/** Redis cannot decide now: unreachable, timed out, loading, read-only replica... */
export class CounterUnavailableError extends Error {
  override name = 'CounterUnavailableError'
}

// Redis error codes that mean "not now" rather than "this script is wrong".
const TRANSIENT_REPLY = /^(LOADING|BUSY|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|OOM|NOREPLICAS|MISCONF)\b/

export function classify(err: unknown): Error {
  if (err instanceof CounterUnavailableError) return err
  // ioredis types ReplyError as `any`; narrow it to Error here, once.
  if (err instanceof (ReplyError as typeof Error) && !TRANSIENT_REPLY.test(err.message)) return err
  const message = err instanceof Error ? err.message : String(err)
  return new CounterUnavailableError(`redis unavailable: ${message}`, { cause: err })
}

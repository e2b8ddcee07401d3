/**
 * Redis failures classified once: "not now" becomes CounterUnavailableError (the fail mode
 * applies); a reply error that is not transient is a bug and stays what it is.
 */
import { ReplyError } from 'ioredis'
import { CounterUnavailableError } from '../errors.ts'

// Redis error codes that mean "not now" rather than "this script is wrong".
const TRANSIENT_REPLY = /^(LOADING|BUSY|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|OOM|NOREPLICAS|MISCONF)\b/

export function classify(err: unknown): Error {
  if (err instanceof CounterUnavailableError) return err
  // ioredis types ReplyError as `any`; narrow it to Error here, once.
  if (err instanceof (ReplyError as typeof Error) && !TRANSIENT_REPLY.test(err.message)) return err
  const message = err instanceof Error ? err.message : String(err)
  return new CounterUnavailableError(`redis unavailable: ${message}`, { cause: err })
}

/** A NOSCRIPT reply: the script cache was emptied (restart, SCRIPT FLUSH, failover). */
export function isNoScript(err: unknown): boolean {
  return err instanceof Error && err.message.startsWith('NOSCRIPT')
}

/**
 * The checks every store makes of a reserve, commit or cancel before touching anything, so all of
 * them refuse the same requests: exactly one daily metric, a reservation id, an expiry after
 * `now` for a reserve, an amount > 0 to hold and >= 0 to commit (a job that used nothing).
 */
import { METRICS } from '../metrics.ts'
import type { DecisionRequest } from './store.ts'

/** Reservation ids: what the service makes, room to spare; safe inside a Redis key name. */
const HOLD_ID = /^[A-Za-z0-9_-]{1,64}$/

export function isHoldMode(mode: DecisionRequest['mode']): mode is 'reserve' | 'commit' | 'cancel' {
  return mode === 'reserve' || mode === 'commit' || mode === 'cancel'
}

/** Throws a TypeError naming what is wrong with a reservation request; other modes must carry no hold. */
export function checkHoldRequest(req: DecisionRequest): void {
  if (!isHoldMode(req.mode)) {
    if (req.hold !== undefined) throw new TypeError(`a ${req.mode} carries no reservation`)
    return
  }
  const hold = req.hold
  if (hold === undefined || typeof hold.id !== 'string' || !HOLD_ID.test(hold.id)) {
    throw new TypeError('a reservation needs an id of 1-64 letters, digits, "_" or "-"')
  }
  const metric = req.metrics[0]
  if (req.metrics.length !== 1 || metric === undefined || METRICS[metric.metric].period !== 'day') {
    throw new TypeError('a reservation is for exactly one daily metric')
  }
  if (req.mode === 'reserve') {
    if (!(metric.amount > 0)) throw new TypeError('a reservation holds an amount > 0')
    if (!Number.isSafeInteger(hold.expiresAt) || hold.expiresAt <= req.now) throw new TypeError('a reservation expires after now')
  } else if (metric.amount < 0 || (req.mode === 'cancel' && metric.amount !== 0)) {
    throw new TypeError('a commit records an amount >= 0; a cancel records nothing (amount 0)')
  }
}

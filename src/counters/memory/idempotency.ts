/**
 * Idempotency records: a first call's answer, kept 24 h under the user's key and replayed to calls
 * with the same key (refused when their parameters differ); the bound on how many keys one user
 * holds at once; and the Redis store's text of an answer, the one the history keeps, so either
 * store replays what the other kept.
 */
import { decodeContext, encodeContext } from '../answer-context.ts'
import type { AnswerContext, DecisionAnswer, IdempotencyRequest } from '../store.ts'
import { KEY_KIND } from './user-state.ts'
import type { KeyRecord, UserState } from './user-state.ts'

/** Idempotency records are kept 24 h, as in the Redis store. */
export const IDEMPOTENCY_TTL_MS = 86_400_000
/** Default of MemoryCounterStoreOptions.idempotencyKeysPerUser (the Redis store's default too). */
export const DEFAULT_IDEMPOTENCY_KEYS_PER_USER = 10_000

/** What a record holds of the answer itself: what encodeAnswer writes and decodeAnswer reads. */
export type KeptFields = Pick<KeyRecord, 'fingerprint' | 'outcome' | 'deniedIndex' | 'current' | 'limits' | 'context'>

/** The user's record under `key` unless it expired (then it is dropped, as an expired Redis key is gone). */
export function liveKey(user: UserState | undefined, key: string, time: number): KeyRecord | undefined {
  const keys = user?.keys
  const record = keys?.get(key)
  if (record !== undefined && record.at <= time) {
    keys?.delete(key)
    return undefined
  }
  return record
}

export function replay(record: KeyRecord, fingerprint: string, context: AnswerContext): DecisionAnswer {
  if (record.fingerprint !== fingerprint) {
    return { outcome: 'key-reused', replayed: false, deniedIndex: -1, context, current: [], limits: [] }
  }
  return {
    outcome: record.outcome, replayed: true, deniedIndex: record.deniedIndex,
    context: copyContext(record.context), current: record.current.slice(), limits: record.limits.slice(),
  }
}

/** A first call's answer as the record replays it for IDEMPOTENCY_TTL_MS from `time`. */
export function answerRecord(
  user: UserState, time: number, idempotency: IdempotencyRequest,
  outcome: 'allowed' | 'denied', deniedIndex: number, current: number[], limits: (number | null)[],
): KeyRecord {
  return {
    at: time + IDEMPOTENCY_TTL_MS, kind: KEY_KIND, user, key: idempotency.key, fingerprint: idempotency.fingerprint,
    outcome, deniedIndex, current: current.slice(),
    // Stored as the Redis store stores them: a negative limit replays as unlimited.
    limits: limits.map((l) => (l !== null && l < 0 ? null : l)),
    context: copyContext(idempotency.context),
  }
}

function copyContext(context: AnswerContext): AnswerContext {
  return context.hold === undefined
    ? { day: context.day, tier: context.tier }
    : { day: context.day, tier: context.tier, hold: { id: context.hold.id, expiresAt: context.hold.expiresAt } }
}

/**
 * 0 when the user may store one more idempotency key under the bound `cap` (0: none), else ms
 * until the oldest one expires. A full user's keys are scanned once (expired ones dropped); until
 * the earliest remaining one expires no room can appear, so refusals meanwhile cost nothing.
 */
export function keyRoomWait(user: UserState, time: number, cap: number): number {
  const keys = user.keys
  if (cap === 0 || keys === undefined || keys.size < cap) return 0
  if (user.keysFullUntil > time) return user.keysFullUntil - time
  let earliest = Infinity
  for (const [key, record] of keys) {
    if (record.at <= time) keys.delete(key)
    else if (record.at < earliest) earliest = record.at
  }
  if (keys.size < cap) return 0
  user.keysFullUntil = earliest
  return Math.max(1, earliest - time)
}

/**
 * An answer as the Redis store stores it — "fingerprint,status,denied,cur..,lim..,context" with
 * status 1 allowed / 0 denied, denied 1-based (0 none), -1 for an unlimited limit and the context
 * as JSON — so the history holds one format whichever store wrote it.
 */
export function encodeAnswer(record: KeyRecord): string {
  let text = `${record.fingerprint},${record.outcome === 'allowed' ? 1 : 0},${record.deniedIndex + 1}`
  for (const c of record.current) text += `,${c}`
  for (const l of record.limits) text += `,${l ?? -1}`
  return `${text},${encodeContext(record.context)}`
}

const INTEGER = /^-?\d+$/

/** Reads encodeAnswer's text (also a context stored as "<day> <tier>"); undefined when malformed. */
export function decodeAnswer(text: string): KeptFields | undefined {
  const parts = text.split(',')
  const numbers: number[] = []
  let i = 1
  for (; i < parts.length && INTEGER.test(parts[i] as string); i++) numbers.push(Number(parts[i]))
  const n = (numbers.length - 2) / 2
  if (i >= parts.length || !Number.isInteger(n) || n < 1) return undefined
  const context = decodeContext(parts.slice(i).join(','))
  return {
    fingerprint: parts[0] as string,
    outcome: numbers[0] === 1 ? 'allowed' : 'denied',
    deniedIndex: (numbers[1] as number) - 1,
    current: numbers.slice(2, 2 + n),
    limits: numbers.slice(2 + n, 2 + 2 * n).map((l) => (l < 0 ? null : l)),
    context,
  }
}

/**
 * The decide.lua wire protocol, in one place: how a DecisionRequest becomes a call's KEYS and
 * ARGV, and how the call's flat reply becomes one answer per decision with a named status. The
 * layout is documented slot by slot in scripts/decide.lua's header; the batcher only transports
 * what this module builds.
 */
import { previousDay, startOfUtcDay } from '../../clock.ts'
import { decodeContext, encodeContext } from '../answer-context.ts'
import type { AnswerContext, DecisionRequest } from '../store.ts'
import { POSITION, gaugePeriod, gaugeTtlSeconds, markMember } from './keys.ts'
import type { KeySpace } from './keys.ts'
import type { ScriptArgument } from './lua-script.ts'

/** Idempotency keys are kept 24 h. */
export const IDEMPOTENCY_TTL_S = 86_400

/** A shard-day hash lives until 2 days after its day ends: time enough for the flusher to catch up. */
const DAY_KEY_LIFETIME_MS = 3 * 86_400_000

/** Status codes of decide.lua's reply (its header names the same numbers). */
const STATUS = {
  denied: 0, allowed: 1, needsSeed: 2, deadlinePassed: 3, keyReused: 4, tooLarge: 5, tooManyKeys: 6, needsKeyLookup: 7,
  notFound: 8, conflict: 9,
} as const
/** Added to the status of an answer replayed from an idempotency key (or a settled reservation). */
const REPLAYED = 10
/** Added to the status of a fresh answer followed by what the day holds per metric. */
const HAS_HELD = 20

/**
 * Seconds a new shard-day hash lives, from `now` on the caller's clock; at least one minute.
 * `day` is the day or the ms its day starts.
 */
export function dayKeyTtlSeconds(day: string | number, now: number): number {
  const start = typeof day === 'number' ? day : startOfUtcDay(day)
  return Math.max(60, Math.ceil((start + DAY_KEY_LIFETIME_MS - now) / 1000))
}

/** A decision encoded for decide.lua, waiting for its call. */
export interface EncodedDecision {
  readonly bucket: number
  /**
   * The shard-day hashes of the day and the day before, the gauges of this period and the last,
   * the user's holds of the day, and with an idempotency key that key and the user's key index.
   */
  readonly keys: readonly string[]
  /** The decision's JSON array after its first two slots (number of keys, deadline), without brackets. */
  readonly body: string
  /** Context and fingerprint, sent only with an idempotency key. */
  readonly idempotent: readonly [context: string, fingerprint: string] | undefined
  /** The limits sent: a fresh answer does not repeat them. */
  readonly limits: readonly (number | null)[]
  readonly context: AnswerContext | undefined
  /** Commit and cancel answer with the amount held in the slot other decisions name a denial in. */
  readonly settles: boolean
  /** A commit's amount, micro-units (its answer says what was recorded). */
  readonly commits: number | undefined
  /**
   * Redis-server time (ms) after which the script must apply nothing, because the caller will
   * have given up; read when the call is built (a NOSCRIPT resend keeps it: stricter, never later).
   */
  readonly deadline: (() => number) | undefined
}

export type ScriptStatus =
  | 'allowed' | 'denied' | 'needs-seed' | 'deadline-passed' | 'key-reused' | 'too-large' | 'too-many-keys' | 'needs-key-lookup'
  | 'not-found' | 'conflict'

/** One decision's part of a reply. */
export interface ScriptAnswer {
  status: ScriptStatus
  replayed: boolean
  /** Index of the first denied metric (too-large: the metric over the ceiling), -1 when none. */
  deniedIndex: number
  /** too-many-keys: ms until the user's oldest idempotency key expires; 0 otherwise. */
  retryAfterMs: number
  current: number[]
  limits: (number | null)[]
  context: AnswerContext | undefined
  /** Held per metric, when the day holds reservations (fresh answers only). */
  reserved?: number[]
  /** Commit and cancel: the amount the reservation held. */
  held?: number
  /** Commit: the amount recorded (a replay: the first commit's). */
  committed?: number
}

/** What a decision needs to know of its day; the same for every decision of the day. */
interface DayFacts {
  readonly day: string
  readonly previous: string
  readonly start: number
  readonly period: number
}

/** The facts of the last day asked for: decisions of one day are most of the traffic. */
let lastDay: DayFacts | undefined

function factsOf(day: string): DayFacts {
  if (lastDay?.day !== day) lastDay = { day, previous: previousDay(day), start: startOfUtcDay(day), period: gaugePeriod(day) }
  return lastDay
}

/**
 * `idempotencyKeysPerUser`: most idempotency keys one user may hold (0 = no bound), slot 9 of
 * the decision.
 */
export function encodeDecision(
  request: DecisionRequest, keySpace: KeySpace, deadline: (() => number) | undefined, idempotencyKeysPerUser = 0,
  /** The key was looked up in Postgres already (after status needs-key-lookup): do not ask again. */
  keyChecked = false,
): EncodedDecision {
  const { userId, day, now, idempotency } = request
  const slot = keySpace.slotOf(userId)
  const bucket = slot.bucket
  const facts = factsOf(day)
  const period = facts.period
  const keys = [
    keySpace.userDay(userId, day, slot), keySpace.userDay(userId, facts.previous, slot),
    keySpace.gauges(bucket, slot.shard, period), keySpace.gauges(bucket, slot.shard, period - 1),
    keySpace.holds(userId, day, bucket),
  ]
  if (idempotency) {
    keys.push(keySpace.idempotency(userId, idempotency.key, bucket), keySpace.idempotencyIndex(userId, bucket))
  }
  // Values handed to Redis commands as they are (now, lifetimes, names) go as JSON strings; the
  // amounts and limits are numbers, only compared. The user id is escaped like any string that
  // came from outside.
  let body = `"${request.mode}","${now}",${JSON.stringify(userId)},"${dayKeyTtlSeconds(facts.start, now)}",`
    + `"${markMember(day, slot.shard)}","${IDEMPOTENCY_TTL_S}",${idempotencyKeysPerUser},`
    + `${keyChecked ? 1 : 0},${facts.start},"${gaugeTtlSeconds(period, now)}",${request.metrics.length}`
  for (const m of request.metrics) body += `,${POSITION[m.metric]},${m.amount},${m.limit ?? -1}`
  if (request.hold !== undefined) body += `,"${request.hold.id}",${request.hold.expiresAt}`
  return {
    bucket,
    keys,
    body,
    idempotent: idempotency ? [encodeContext(idempotency.context), idempotency.fingerprint] : undefined,
    limits: request.metrics.map((m) => m.limit),
    context: idempotency?.context,
    settles: request.mode === 'commit' || request.mode === 'cancel',
    commits: request.mode === 'commit' ? (request.metrics[0]?.amount ?? 0) : undefined,
    deadline,
  }
}

/** KEYS then ARGV of one decide.lua call for decisions of one bucket; deadlines are read now. */
export function encodeCall(
  keySpace: KeySpace, bucket: number, decisions: readonly EncodedDecision[],
): { numKeys: number; keysThenArgs: ScriptArgument[] } {
  const keysThenArgs: ScriptArgument[] = [
    keySpace.marks(bucket), keySpace.epoch(bucket), keySpace.keyOutbox(bucket), keySpace.crossings(bucket),
  ]
  for (const d of decisions) for (const key of d.keys) keysThenArgs.push(key)
  const numKeys = keysThenArgs.length
  keysThenArgs.push(decisions.length)
  for (const d of decisions) {
    keysThenArgs.push(`[${d.keys.length},${d.deadline ? d.deadline() : 0},${d.body}]`)
    if (d.idempotent) keysThenArgs.push(d.idempotent[0], d.idempotent[1])
  }
  return { numKeys, keysThenArgs }
}

function statusName(code: number): ScriptStatus {
  switch (code) {
    case STATUS.allowed: return 'allowed'
    case STATUS.denied: return 'denied'
    case STATUS.needsSeed: return 'needs-seed'
    case STATUS.deadlinePassed: return 'deadline-passed'
    case STATUS.keyReused: return 'key-reused'
    case STATUS.tooLarge: return 'too-large'
    case STATUS.tooManyKeys: return 'too-many-keys'
    case STATUS.needsKeyLookup: return 'needs-key-lookup'
    case STATUS.notFound: return 'not-found'
    case STATUS.conflict: return 'conflict'
    default: throw new Error(`decide.lua returned an unknown status ${code}`)
  }
}

/** Splits a call's flat reply into one answer per decision (layout: decide.lua's header). */
export function decodeReply(flat: readonly (number | string)[], decisions: readonly EncodedDecision[]): ScriptAnswer[] {
  const answers: ScriptAnswer[] = []
  let at = 0
  for (const d of decisions) {
    const code = flat[at]
    if (typeof code !== 'number') throw new Error('decide.lua returned fewer answers than decisions')
    const hasHeld = code >= HAS_HELD
    const replayed = !hasHeld && code >= REPLAYED
    const status = statusName(hasHeld ? code - HAS_HELD : replayed ? code - REPLAYED : code)
    const second = flat[at + 1] as number
    const n = d.limits.length
    if (status === 'too-many-keys') {
      answers.push({ status, replayed: false, deniedIndex: -1, retryAfterMs: second, current: [], limits: [], context: d.context })
      at += 2
      continue
    }
    const deniedIndex = d.settles ? -1 : second - 1
    const held = d.settles ? second : undefined
    if (status !== 'allowed' && status !== 'denied') {
      answers.push({ status, replayed: false, deniedIndex, retryAfterMs: 0, current: [], limits: [], context: d.context })
      at += 2
      continue
    }
    const current = flat.slice(at + 2, at + 2 + n) as number[]
    if (!replayed) {
      const fresh: ScriptAnswer = { status, replayed, deniedIndex, retryAfterMs: 0, current, limits: [...d.limits], context: d.context }
      if (held !== undefined) fresh.held = held
      if (d.commits !== undefined && status === 'allowed') fresh.committed = d.commits
      if (hasHeld) fresh.reserved = flat.slice(at + 2 + n, at + 2 + 2 * n) as number[]
      answers.push(fresh)
      at += 2 + (hasHeld ? 2 * n : n)
      continue
    }
    // A replay answers with the first call's limits and context (a settled reservation keeps none).
    const limits = (flat.slice(at + 2 + n, at + 2 + 2 * n) as number[]).map((l) => (l < 0 ? null : l))
    const contextText = String(flat[at + 2 + 2 * n])
    // A settled reservation's answer keeps the amount a commit recorded where others keep a context.
    const context = d.settles ? d.context : decodeContext(contextText)
    const replay: ScriptAnswer = { status, replayed, deniedIndex, retryAfterMs: 0, current, limits, context }
    if (held !== undefined) replay.held = held
    if (d.settles) {
      const [committed, reserved] = contextText.split(';').map(Number)
      if (d.commits !== undefined) replay.committed = committed
      if (reserved !== undefined && reserved > 0) replay.reserved = [reserved]
    }
    answers.push(replay)
    at += 3 + 2 * n
  }
  return answers
}

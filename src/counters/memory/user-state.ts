/**
 * The memory store's users and what each holds: the storage gauge and its expiry, day states (day
 * -> counts in registry order and version) and idempotency records (key -> stored answer), and
 * the expiry queue holding every day state and idempotency record, and one entry per gauge.
 *
 * Each lifetime is set when the thing is created — a day state until 2 days after its day ends
 * (from the request's `now`, at least a minute), the gauge 35 days after its last write (an
 * idempotency record's is in idempotency.ts) — and elapses on the store's clock (`time` below).
 * An expired thing is gone the moment a call looks at it; its memory is reclaimed by popping due
 * entries off the expiry queue, a few per decision, more per flusher read. A user left with
 * nothing is dropped, so memory follows what is live.
 */
import { DAY_MS, startOfUtcDay } from '../../clock.ts'
import type { MetricName } from '../../metrics.ts'
import type { AnswerContext, MetricCounts } from '../store.ts'
import { bucketOf } from './bucket-marks.ts'
import type { DayHolds } from './holds.ts'
import { ExpiryQueue } from './expiry-queue.ts'

/** A day state lives until 2 days after its day ends: time enough for the flusher to catch up. */
const DAY_STATE_LIFETIME_MS = 3 * DAY_MS
/** A new day state lives at least this long, whatever its day (the Redis store's one-minute floor). */
const MIN_DAY_STATE_LIFETIME_MS = 60_000
/**
 * The gauge expires 35 days after its last write (storage changes, a day's first change, a storage
 * reset), like the Redis store's: the gauge of a user gone for good does not stay forever. An
 * expired gauge is lost state, rebuilt from the history by the next decision.
 */
export const GAUGE_TTL_MS = 35 * DAY_MS
/** Due entries a decision reclaims at most: more than the up to three one decision queues. */
const SWEEP_PER_DECISION = 8
/** Due entries a flusher read reclaims at most (catches up after a quiet spell). */
const SWEEP_PER_READ = 10_000

/** Index of a metric in a day state's counts (registry order); no prototype, so unknown names read undefined. */
export const INDEX: Readonly<Record<string, number>> = Object.assign(Object.create(null) as Record<string, number>, {
  deployments: 0, api_calls: 1, compute_hours: 2, storage: 3,
} satisfies Record<MetricName, number>)
export const STORAGE = 3

const DAY_KIND = 0
export const KEY_KIND = 1
const GAUGE_KIND = 2

/** One user-day: counts in registry order (storage: the gauge as it stood that day) and version. */
export interface DayState {
  /** Expiry, ms (fixed when created). */
  at: number
  kind: typeof DAY_KIND
  user: UserState
  day: string
  counts: [number, number, number, number]
  version: number
  /** Whether this state's member is in its bucket's dirty marks (saves a Map lookup per write). */
  dirty: boolean
  /** "<user>:<day>", built the first time the day is marked dirty. */
  member: string | undefined
  /** Thresholds reached by the daily metrics (thresholds.ts). */
  crossed: number
  /** The day's reservations, once it has had one. */
  holds: DayHolds | undefined
}

/** An idempotent answer, replayed for 24 h to calls with the same key. */
export interface KeyRecord {
  at: number
  kind: typeof KEY_KIND
  user: UserState
  key: string
  fingerprint: string
  outcome: 'allowed' | 'denied'
  deniedIndex: number
  current: number[]
  limits: (number | null)[]
  context: AnswerContext
}

/** The expiry queue's entry for a user's gauge; re-queued when the gauge was renewed meanwhile. */
interface GaugeEntry {
  at: number
  kind: typeof GAUGE_KIND
  user: UserState
}

type Entry = DayState | KeyRecord | GaugeEntry

export class UserState {
  readonly bucket: number
  gauge = 0
  /** When the gauge expires (ms); the gauge exists while it is after `now`. */
  gaugeAt = -Infinity
  gaugeEntry: GaugeEntry | undefined
  readonly days = new Map<string, DayState>()
  keys: Map<string, KeyRecord> | undefined
  /** Set when a scan found the user holding the most keys: no key expires before this time. */
  keysFullUntil = 0
  /** The last call queued behind a load, while any is pending: later calls of the user queue behind it. */
  tail: Promise<unknown> | undefined
  /** A load failed while calls were queued: those needing a load fail with it rather than retry one by one. */
  loadFailure: unknown

  constructor(readonly id: string) {
    this.bucket = bucketOf(id)
  }
}

export function countsOf(state: DayState): MetricCounts {
  const [deployments, api_calls, compute_hours, storage] = state.counts
  return { deployments, api_calls, compute_hours, storage }
}

/** Every user the store holds (userId -> UserState), with the expiry queue of what they hold. */
export class UserTable {
  #users = new Map<string, UserState>()
  readonly #expiry = new ExpiryQueue<Entry>()

  get(userId: string): UserState | undefined {
    return this.#users.get(userId)
  }

  /** The user's state, created empty when the store holds none. */
  user(userId: string): UserState {
    let user = this.#users.get(userId)
    if (user === undefined) {
      user = new UserState(userId)
      this.#users.set(userId, user)
    }
    return user
  }

  /** Forgets every user and empties the expiry queue. */
  clear(): void {
    this.#users = new Map()
    this.#expiry.clear()
  }

  size(): { users: number; days: number; idempotencyKeys: number; queued: number } {
    let days = 0
    let keys = 0
    for (const user of this.#users.values()) {
      days += user.days.size
      keys += user.keys?.size ?? 0
    }
    return { users: this.#users.size, days, idempotencyKeys: keys, queued: this.#expiry.size }
  }

  /** Reclaims a few entries, when any are due: the only purge a decision pays for. */
  sweepSome(time: number): void {
    const next = this.#expiry.peek()
    if (next !== undefined && next.at <= time) this.#sweep(time, SWEEP_PER_DECISION)
  }

  /** Reclaims up to SWEEP_PER_READ entries due at `time` (a flusher read). */
  sweepMany(time: number): void {
    this.#sweep(time, SWEEP_PER_READ)
  }

  /** Reclaims up to `budget` entries due at `time`. Each entry is checked: it may have been replaced or renewed since. */
  #sweep(time: number, budget: number): void {
    const queue = this.#expiry
    for (let i = 0; i < budget; i++) {
      const entry = queue.peek()
      if (entry === undefined || entry.at > time) return
      queue.pop()
      const user = entry.user
      if (entry.kind === GAUGE_KIND) {
        if (user.gaugeAt > entry.at) {
          // Renewed since it was queued: queue it again for its new expiry.
          entry.at = user.gaugeAt
          queue.push(entry)
          continue
        }
        user.gaugeEntry = undefined
      } else if (entry.kind === DAY_KIND) {
        if (user.days.get(entry.day) === entry) user.days.delete(entry.day)
      } else if (user.keys?.get(entry.key) === entry) {
        user.keys.delete(entry.key)
      }
      this.dropIfEmpty(user, time)
    }
  }

  /** Forgets a user that holds nothing live and waits for nothing. */
  dropIfEmpty(user: UserState, time: number): void {
    if (user.days.size === 0 && (user.keys === undefined || user.keys.size === 0) && !(user.gaugeAt > time)
      && user.tail === undefined && this.#users.get(user.id) === user) {
      this.#users.delete(user.id)
    }
  }

  /** A day state that has not expired, or undefined. */
  liveDay(userId: string, day: string, time: number): DayState | undefined {
    const state = this.#users.get(userId)?.days.get(day)
    return state !== undefined && state.at > time ? state : undefined
  }

  /** The user's state of `day` unless it expired (then it is gone, as an expired key is). */
  dayOf(user: UserState, day: string, time: number): DayState | undefined {
    const state = user.days.get(day)
    if (state === undefined || state.at > time) return state
    user.days.delete(day)
    return undefined
  }

  /** A new day state, living until 2 days after its day ends by the request's `now` (at least a minute). */
  newDay(user: UserState, day: string, now: number, time: number, counts: DayState['counts'], version: number): DayState {
    const state: DayState = {
      at: time + Math.max(MIN_DAY_STATE_LIFETIME_MS, startOfUtcDay(day) + DAY_STATE_LIFETIME_MS - now),
      kind: DAY_KIND, user, day, counts, version, dirty: false, member: undefined, crossed: 0, holds: undefined,
    }
    user.days.set(day, state)
    this.#expiry.push(state)
    return state
  }

  /** Renews the gauge for GAUGE_TTL_MS from `time`. */
  renewGauge(user: UserState, time: number): void {
    user.gaugeAt = time + GAUGE_TTL_MS
    if (user.gaugeEntry === undefined) {
      user.gaugeEntry = { at: user.gaugeAt, kind: GAUGE_KIND, user }
      this.#expiry.push(user.gaugeEntry)
    }
  }

  /** Holds an idempotency record under its key (over any record there) until it expires. */
  keepKey(user: UserState, record: KeyRecord): void {
    ;(user.keys ??= new Map()).set(record.key, record)
    this.#expiry.push(record)
  }
}

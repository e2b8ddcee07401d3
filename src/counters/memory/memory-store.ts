/**
 * The CounterStore in the process (embedded mode: no Redis). Same answers as the Redis store —
 * the conformance suite runs against both — with the state in Maps:
 *
 *   users          userId -> UserState: the storage gauge and its expiry, the user's day states
 *                  (day -> counts and version), idempotency records (key -> stored answer)
 *   dirty marks    one Map per bucket, "<user>:<day>" -> ms of the first unflushed change
 *   key outbox     one Map per bucket, "<user>:<key>" -> ms stored: idempotent answers the
 *                  flusher has not copied to the history yet
 *   expiry queue   every day state and idempotency record, and one entry per gauge, by expiry
 *
 * Lifetimes are the Redis store's, and run the way Redis runs them: each is set when the thing is
 * created — a day state until 2 days after its day ends (from the request's `now`, at least a
 * minute), an idempotency record 24 h, the gauge 35 days after its last write — and elapses on
 * the store's own clock (Redis: the server's). Embedded mode hands the store the service's
 * injectable clock, so both agree and a test moves days by moving that clock. (Requests' `now`
 * alone will not do: a caller may send any `now` — the model test replays idempotency keys over
 * simulated days and expects them held, as a Redis key is for 24 h of Redis time.)
 *
 * An expired thing is treated as gone the moment a call looks at it, and its memory is reclaimed
 * by popping a few due entries off the expiry queue per decision (more per flusher read): never a
 * scan of every user on the hot path. A user left with nothing is dropped, so memory follows
 * what is live.
 *
 * Lost state: the store starts empty (a process start, or clear()). A decision that needs a
 * user's gauge, or a day state that may have existed before this store's epoch (the first
 * rebuild), asks the loader — the history — once, then decides. For 24 h after the epoch, a
 * decision that would store a new idempotency key first asks the key loader whether the history
 * kept an answer under it (given before the start), and replays that one if so. A user's
 * decisions stay atomic and in order across those waits: while one is pending, that user's calls
 * queue behind it; a user whose state is here decides synchronously (the returned promise is
 * already resolved).
 */
import { DAY_MS, startOfUtcDay, systemClock } from '../../clock.ts'
import type { Clock } from '../../clock.ts'
import { MAX_TOTAL_MICRO } from '../../metrics.ts'
import type { MetricName } from '../../metrics.ts'
import { CounterUnavailableError } from '../errors.ts'
import type {
  AnswerContext, CounterStore, DecisionAnswer, DecisionRequest, DirtyUserDay, MetricCounts, SeedLoader, SeedState,
  WrittenUserDay,
} from '../store.ts'
import { ExpiryQueue } from './expiry-queue.ts'

/** Idempotency records are kept 24 h, as in the Redis store. */
export const IDEMPOTENCY_TTL_MS = 86_400_000
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
/** Number of dirty-mark partitions: the flusher acknowledges per bucket. */
export const BUCKETS = 64
/** Default of MemoryCounterStoreOptions.idempotencyKeysPerUser (the Redis store's default too). */
export const DEFAULT_IDEMPOTENCY_KEYS_PER_USER = 10_000
/** Due entries a decision reclaims at most: more than the up to three one decision queues. */
const SWEEP_PER_DECISION = 8
/** Due entries a flusher read reclaims at most (catches up after a quiet spell). */
const SWEEP_PER_READ = 10_000
/** Loads one call tries before giving up (each one leaves the state it loaded, so one is enough). */
const MAX_LOAD_ATTEMPTS = 3

/**
 * FNV-1a of the user id, modulo BUCKETS: stable across processes. The same function as the Redis
 * store's key layout uses (a copy: counters/redis/ is off limits to the rest of counters/), so a
 * user falls in the same bucket whichever store holds it.
 */
export function bucketOf(userId: string): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < userId.length; i++) {
    hash ^= userId.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193)
  }
  return (hash >>> 0) % BUCKETS
}

/** Index of a metric in a day state's counts (registry order); no prototype, so unknown names read undefined. */
const INDEX: Readonly<Record<string, number>> = Object.assign(Object.create(null) as Record<string, number>, {
  deployments: 0, api_calls: 1, compute_hours: 2, storage: 3,
} satisfies Record<MetricName, number>)
const STORAGE = 3

const DAY_KIND = 0
const KEY_KIND = 1
const GAUGE_KIND = 2

/** One user-day: counts in registry order (storage: the gauge as it stood that day) and version. */
interface DayState {
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
}

/** An idempotent answer, replayed for 24 h to calls with the same key. */
interface KeyRecord {
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

class UserState {
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

interface DirtyMark {
  userId: string
  day: string
  member: string
  since: number
}

interface OutboxMark {
  userId: string
  key: string
  member: string
  since: number
}

/** An idempotent answer as the history keeps it (store.ts's KeptAnswer). */
export interface KeptAnswerText {
  /** The Redis store's encoding, so either store replays what the other kept. */
  answer: string
  /** When the key is forgotten (ms, store clock): 24 h after its first call. */
  expiresAt: number
}

/** An idempotency key whose answer is not in the history yet (store.ts's PendingKey). */
export interface PendingAnswer {
  bucket: number
  userId: string
  key: string
  /** Null when the key has expired meanwhile: nothing left to keep. */
  kept: KeptAnswerText | null
}

export interface MemoryCounterStoreOptions {
  /**
   * Reads a user-day from the history when this store does not hold it (after a start). Without
   * one, such state counts from 0.
   */
  loader?: SeedLoader
  /**
   * Reads an answer the history kept under a user's idempotency key (store.ts's KeyLoader). Asked
   * only in the first 24 h after the epoch. Without one, such keys count as new.
   */
  keyLoader?: (userId: string, key: string) => Promise<KeptAnswerText | undefined>
  /** Most idempotency keys one user holds at once; 0 = no bound. @default 10000 */
  idempotencyKeysPerUser?: number
  /**
   * The store's own time, on which lifetimes elapse (Redis: the server's clock). Pass the
   * service's clock, so requests' `now` and the store agree. @default systemClock
   */
  clock?: Clock
}

/** Entries the store holds now (a diagnostic: tests check memory follows what is live). */
export interface MemoryStoreSize {
  users: number
  days: number
  idempotencyKeys: number
  dirty: number
  /** Idempotent answers not yet copied to the history. */
  pendingKeys: number
  /** Entries in the expiry queue (live ones, and due ones not yet reclaimed). */
  queued: number
}

/** Marks a call that must wait for the history before it can run. */
const NEEDS_LOAD: unique symbol = Symbol('needs-load')
/** Marks a call that must ask the history for its idempotency key's answer before it can run. */
const NEEDS_KEY: unique symbol = Symbol('needs-key')
/** One try of a call at the store's time `time`; `keyChecked`: the key loader was asked already. */
type Attempt<T> = (time: number, keyChecked: boolean) => T | typeof NEEDS_LOAD | typeof NEEDS_KEY

const DAY = /^\d{4}-\d{2}-\d{2}$/

function checkDay(day: string): number {
  const start = DAY.test(day) ? startOfUtcDay(day) : Number.NaN
  if (Number.isNaN(start)) throw new TypeError(`day must be YYYY-MM-DD, got "${day}"`)
  return start
}

/** The Redis store's checks, so both refuse the same requests (and nothing is half-applied). */
function checkRequest(req: DecisionRequest): void {
  checkDay(req.day)
  if (!Number.isSafeInteger(req.now)) throw new TypeError('now must be epoch milliseconds')
  if (req.metrics.length === 0) throw new TypeError('at least one metric is required')
  for (const m of req.metrics) {
    if (INDEX[m.metric] === undefined) throw new TypeError(`unknown metric "${String(m.metric)}"`)
    if (!Number.isSafeInteger(m.amount)) throw new TypeError(`amount must be a whole number of micro-units, got ${m.amount}`)
    if (m.limit !== null && !Number.isSafeInteger(m.limit)) throw new TypeError(`limit must be a whole number of micro-units or null, got ${m.limit}`)
  }
}

/** A loaded value as a counter can hold it: whole micro-units in 0..MAX_TOTAL_MICRO. */
function seedable(micro: number): number {
  if (Number.isNaN(micro)) return MAX_TOTAL_MICRO
  return Math.min(MAX_TOTAL_MICRO, Math.max(0, Math.ceil(micro)))
}

const EMPTY_STATE: SeedState = { counts: { deployments: 0, api_calls: 0, compute_hours: 0, storage: 0 }, version: 0, gauge: 0 }

function noop(): void {}

export class MemoryCounterStore implements CounterStore {
  readonly #loader: SeedLoader | undefined
  readonly #keyLoader: MemoryCounterStoreOptions['keyLoader']
  readonly #keysPerUser: number
  #users = new Map<string, UserState>()
  #dirty: Map<string, DirtyMark>[] = Array.from({ length: BUCKETS }, () => new Map<string, DirtyMark>())
  #outbox: Map<string, OutboxMark>[] = Array.from({ length: BUCKETS }, () => new Map<string, OutboxMark>())
  #expiry = new ExpiryQueue<Entry>()
  /**
   * When this store first rebuilt state (ms, callers' clock); undefined until then. A missing day
   * state is a fresh day only for days starting after it: an earlier day may have been counted
   * before the store started, and the history knows.
   */
  #epoch: number | undefined
  readonly #clock: Clock

  constructor(options: MemoryCounterStoreOptions = {}) {
    this.#loader = options.loader
    this.#keyLoader = options.keyLoader
    this.#clock = options.clock ?? systemClock
    const keysPerUser = options.idempotencyKeysPerUser ?? DEFAULT_IDEMPOTENCY_KEYS_PER_USER
    if (!Number.isSafeInteger(keysPerUser) || keysPerUser < 0) {
      throw new TypeError(`idempotencyKeysPerUser must be a whole number >= 0, got ${keysPerUser}`)
    }
    this.#keysPerUser = keysPerUser
  }

  async start(): Promise<void> {}

  /** Nothing to stop: the store runs no timer and opens nothing. */
  async close(): Promise<void> {}

  async ping(): Promise<void> {}

  /** Forgets everything, as a process restart does (tests; the next calls load from the history). */
  clear(): void {
    this.#users = new Map()
    this.#dirty = Array.from({ length: BUCKETS }, () => new Map<string, DirtyMark>())
    this.#outbox = Array.from({ length: BUCKETS }, () => new Map<string, OutboxMark>())
    this.#expiry.clear()
    this.#epoch = undefined
  }

  size(): MemoryStoreSize {
    let days = 0
    let keys = 0
    for (const user of this.#users.values()) {
      days += user.days.size
      keys += user.keys?.size ?? 0
    }
    let dirty = 0
    for (const marks of this.#dirty) dirty += marks.size
    let pendingKeys = 0
    for (const marks of this.#outbox) pendingKeys += marks.size
    return { users: this.#users.size, days, idempotencyKeys: keys, dirty, pendingKeys, queued: this.#expiry.size }
  }

  decide(request: DecisionRequest): Promise<DecisionAnswer> {
    try {
      checkRequest(request)
      const time = this.#clock.now()
      this.#sweepSome(time)
      const user = this.#users.get(request.userId)
      if (user === undefined || user.tail === undefined) {
        let answer = this.#decideNow(request, time, false)
        if (answer === NEEDS_LOAD && this.#loader === undefined) {
          this.#seed(request.userId, request.day, request.now, time, EMPTY_STATE)
          answer = this.#decideNow(request, time, false)
        }
        if (answer !== NEEDS_LOAD && answer !== NEEDS_KEY) return Promise.resolve(answer)
      }
      return this.#queue(request.userId, request.day, request.now, (t, keyChecked) => this.#decideNow(request, t, keyChecked),
        request.idempotency?.key)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  reset(userId: string, day: string, now: number, metrics: readonly MetricName[]): Promise<void> {
    try {
      checkDay(day)
      if (!Number.isSafeInteger(now)) throw new TypeError('now must be epoch milliseconds')
      for (const m of metrics) if (INDEX[m] === undefined) throw new TypeError(`unknown metric "${String(m)}"`)
      const time = this.#clock.now()
      this.#sweepSome(time)
      const attempt = (t: number): null | typeof NEEDS_LOAD => this.#resetNow(userId, day, now, t, metrics)
      const user = this.#users.get(userId)
      if (user === undefined || user.tail === undefined) {
        let done = attempt(time)
        if (done === NEEDS_LOAD && this.#loader === undefined) {
          this.#seed(userId, day, now, time, EMPTY_STATE)
          done = attempt(time)
        }
        if (done !== NEEDS_LOAD) return Promise.resolve()
      }
      return this.#queue(userId, day, now, attempt).then(noop)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  async readDirty(maxPerBucket: number): Promise<DirtyUserDay[]> {
    const time = this.#clock.now()
    this.#sweep(time, SWEEP_PER_READ)
    const out: DirtyUserDay[] = []
    if (!(maxPerBucket > 0)) return out
    for (let bucket = 0; bucket < BUCKETS; bucket++) {
      const marks = this.#dirty[bucket] as Map<string, DirtyMark>
      if (marks.size === 0) continue
      // Oldest first, then by member: the order of a sorted set, so both stores read alike.
      const list = [...marks.values()].sort((a, b) => a.since - b.since || (a.member < b.member ? -1 : a.member > b.member ? 1 : 0))
      const n = Math.min(list.length, maxPerBucket)
      for (let i = 0; i < n; i++) {
        const mark = list[i] as DirtyMark
        const state = this.#liveDay(mark.userId, mark.day, time)
        out.push({
          bucket, userId: mark.userId, day: mark.day, since: mark.since,
          state: state === undefined ? null : { counts: countsOf(state), version: state.version },
        })
      }
    }
    return out
  }

  async acknowledge(bucket: number, written: readonly WrittenUserDay[], readAt = 0): Promise<number> {
    const marks = this.#dirty[bucket]
    if (marks === undefined) return 0
    const time = this.#clock.now()
    let removed = 0
    for (const w of written) {
      const member = `${w.userId}:${w.day}`
      const mark = marks.get(member)
      const state = this.#liveDay(w.userId, w.day, time)
      if (state === undefined || state.version <= w.version) {
        if (mark !== undefined) {
          marks.delete(member)
          removed++
        }
        if (state !== undefined) state.dirty = false
      } else if (readAt > 0 && mark !== undefined && readAt > mark.since) {
        // Changed since it was read: stays dirty, but only since the read (what was read is written).
        mark.since = readAt
      }
    }
    return removed
  }

  async readPendingKeys(maxPerBucket: number): Promise<PendingAnswer[]> {
    const time = this.#clock.now()
    const out: PendingAnswer[] = []
    if (!(maxPerBucket > 0)) return out
    for (let bucket = 0; bucket < BUCKETS; bucket++) {
      const marks = this.#outbox[bucket] as Map<string, OutboxMark>
      if (marks.size === 0) continue
      const list = [...marks.values()].sort((a, b) => a.since - b.since || (a.member < b.member ? -1 : a.member > b.member ? 1 : 0))
      const n = Math.min(list.length, maxPerBucket)
      for (let i = 0; i < n; i++) {
        const mark = list[i] as OutboxMark
        const record = this.#users.get(mark.userId)?.keys?.get(mark.key)
        const live = record !== undefined && record.at > time
        out.push({ bucket, userId: mark.userId, key: mark.key, kept: live ? { answer: encodeAnswer(record), expiresAt: record.at } : null })
      }
    }
    return out
  }

  async acknowledgeKeys(bucket: number, keys: readonly { userId: string; key: string }[]): Promise<number> {
    const marks = this.#outbox[bucket]
    if (marks === undefined) return 0
    let removed = 0
    for (const k of keys) if (marks.delete(`${k.userId}:${k.key}`)) removed++
    return removed
  }

  async oldestDirty(): Promise<number | null> {
    let oldest: number | null = null
    for (const marks of this.#dirty) {
      for (const mark of marks.values()) if (oldest === null || mark.since < oldest) oldest = mark.since
    }
    return oldest
  }

  async dirtyCounts(): Promise<number[]> {
    return this.#dirty.map((marks) => marks.size)
  }

  /** Reclaims a few entries, when any are due: the only purge a decision pays for. */
  #sweepSome(time: number): void {
    const next = this.#expiry.peek()
    if (next !== undefined && next.at <= time) this.#sweep(time, SWEEP_PER_DECISION)
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
      this.#dropIfEmpty(user, time)
    }
  }

  /** Forgets a user that holds nothing live and waits for nothing. */
  #dropIfEmpty(user: UserState, time: number): void {
    if (user.days.size === 0 && (user.keys === undefined || user.keys.size === 0) && !(user.gaugeAt > time)
      && user.tail === undefined && this.#users.get(user.id) === user) {
      this.#users.delete(user.id)
    }
  }

  /** A day state that has not expired, or undefined. */
  #liveDay(userId: string, day: string, time: number): DayState | undefined {
    const state = this.#users.get(userId)?.days.get(day)
    return state !== undefined && state.at > time ? state : undefined
  }

  #user(userId: string): UserState {
    let user = this.#users.get(userId)
    if (user === undefined) {
      user = new UserState(userId)
      this.#users.set(userId, user)
    }
    return user
  }

  /** Renews the gauge for GAUGE_TTL_MS from `time`. */
  #renewGauge(user: UserState, time: number): void {
    user.gaugeAt = time + GAUGE_TTL_MS
    if (user.gaugeEntry === undefined) {
      user.gaugeEntry = { at: user.gaugeAt, kind: GAUGE_KIND, user }
      this.#expiry.push(user.gaugeEntry)
    }
  }

  /** A new day state, living until 2 days after its day ends by the request's `now` (at least a minute). */
  #newDay(user: UserState, day: string, now: number, time: number, counts: DayState['counts'], version: number): DayState {
    const state: DayState = {
      at: time + Math.max(MIN_DAY_STATE_LIFETIME_MS, startOfUtcDay(day) + DAY_STATE_LIFETIME_MS - now),
      kind: DAY_KIND, user, day, counts, version, dirty: false, member: undefined,
    }
    user.days.set(day, state)
    this.#expiry.push(state)
    return state
  }

  /** The user's state of `day` unless it expired (then it is gone, as an expired key is). */
  #dayOf(user: UserState, day: string, time: number): DayState | undefined {
    const state = user.days.get(day)
    if (state === undefined || state.at > time) return state
    user.days.delete(day)
    return undefined
  }

  /** Whether a missing day state may be one the history holds (a day that started before the epoch). */
  #mayHaveBeenLost(day: string): boolean {
    const epoch = this.#epoch
    return epoch === undefined || epoch > startOfUtcDay(day)
  }

  /** Marks a user-day dirty since `now`, unless it is marked already (then the older time stays). */
  #markDirty(user: UserState, state: DayState, now: number): void {
    const member = (state.member ??= `${user.id}:${state.day}`)
    const marks = this.#dirty[user.bucket] as Map<string, DirtyMark>
    if (!marks.has(member)) marks.set(member, { userId: user.id, day: state.day, member, since: now })
    state.dirty = true
  }

  /** One decision, synchronously; NEEDS_LOAD when the user's state must come from the history first. */
  #decideNow(req: DecisionRequest, time: number, keyChecked: boolean): DecisionAnswer | typeof NEEDS_LOAD | typeof NEEDS_KEY {
    const { mode, now, metrics, idempotency } = req
    const user = this.#users.get(req.userId)
    const storesKey = idempotency !== undefined && (mode === 'consume' || mode === 'increment')
    if (idempotency !== undefined) {
      const keys = user?.keys
      let record = keys?.get(idempotency.key)
      if (record !== undefined && record.at <= time) {
        keys?.delete(idempotency.key)
        record = undefined
      }
      if (record !== undefined) return replay(record, idempotency.fingerprint, idempotency.context)
    }
    if (user === undefined) return NEEDS_LOAD

    let day = this.#dayOf(user, req.day, time)
    const n = metrics.length
    let hasStorage = false
    for (let i = 0; i < n; i++) if ((metrics[i] as DecisionRequest['metrics'][number]).metric === 'storage') hasStorage = true
    if (hasStorage || day === undefined) {
      if (!(user.gaugeAt > time)) return NEEDS_LOAD
      if (day === undefined && this.#mayHaveBeenLost(req.day)) return NEEDS_LOAD
    }
    if (storesKey) {
      // In the first 24 h after the epoch a key missing here may have been answered before the
      // start: the history may keep that answer. Never otherwise.
      const epoch = this.#epoch
      if (!keyChecked && this.#keyLoader !== undefined && epoch !== undefined && epoch > req.now - IDEMPOTENCY_TTL_MS) return NEEDS_KEY
      const wait = this.#keyRoomWait(user, time)
      if (wait > 0) {
        return { outcome: 'too-many-keys', replayed: false, deniedIndex: -1, retryAfterMs: wait, context: idempotency.context, current: [], limits: [] }
      }
    }

    const current = new Array<number>(n)
    const limits = new Array<number | null>(n)
    const counts = day?.counts
    for (let i = 0; i < n; i++) {
      const m = metrics[i] as DecisionRequest['metrics'][number]
      const index = INDEX[m.metric] as number
      current[i] = index === STORAGE ? user.gauge : counts === undefined ? 0 : counts[index as 0 | 1 | 2]
      limits[i] = m.limit
    }

    let outcome: 'allowed' | 'denied' = 'allowed'
    let deniedIndex = -1
    if (mode === 'check' || mode === 'consume') {
      for (let i = 0; i < n; i++) {
        const m = metrics[i] as DecisionRequest['metrics'][number]
        // A negative limit reads as unlimited, as the Redis store's -1 does.
        if (m.limit !== null && m.limit >= 0 && (current[i] as number) + m.amount > m.limit) {
          outcome = 'denied'
          deniedIndex = i
          break
        }
      }
    }
    if (outcome === 'allowed' && (mode === 'consume' || mode === 'increment')) {
      // Past its limit is an ordinary denial; the ceiling refuses only what would be admitted.
      for (let i = 0; i < n; i++) {
        const amount = (metrics[i] as DecisionRequest['metrics'][number]).amount
        if (amount > 0 && (current[i] as number) + amount > MAX_TOTAL_MICRO) {
          return { outcome: 'too-large', replayed: false, deniedIndex: i, context: idempotency?.context, current: [], limits: [] }
        }
      }
    }
    if (outcome === 'allowed' && mode !== 'check') {
      const sign = mode === 'refund' ? -1 : 1
      for (let i = 0; i < n; i++) {
        const v = (current[i] as number) + sign * (metrics[i] as DecisionRequest['metrics'][number]).amount
        current[i] = v < 0 ? 0 : v // a refund or a storage decrement never goes below 0
      }
      if (day === undefined) {
        // The day's row records the gauge as it stands that day; the user is active: keep the gauge.
        day = this.#newDay(user, req.day, now, time, [0, 0, 0, user.gauge], 0)
        if (!hasStorage) this.#renewGauge(user, time)
      }
      const dayCounts = day.counts
      for (let i = 0; i < n; i++) {
        const index = INDEX[(metrics[i] as DecisionRequest['metrics'][number]).metric] as number
        const v = current[i] as number
        dayCounts[index as 0 | 1 | 2 | 3] = v
        if (index === STORAGE) {
          user.gauge = v
          this.#renewGauge(user, time)
        }
      }
      day.version++
      if (!day.dirty) this.#markDirty(user, day, now)
    }

    if (storesKey) {
      const record: KeyRecord = {
        at: time + IDEMPOTENCY_TTL_MS, kind: KEY_KIND, user, key: idempotency.key, fingerprint: idempotency.fingerprint,
        outcome, deniedIndex, current: current.slice(),
        // Stored as the Redis store stores them: a negative limit replays as unlimited.
        limits: limits.map((l) => (l !== null && l < 0 ? null : l)),
        context: { day: idempotency.context.day, tier: idempotency.context.tier },
      }
      ;(user.keys ??= new Map()).set(idempotency.key, record)
      this.#expiry.push(record)
      // For the flusher, which copies the answer to the history: it outlives a restart.
      const member = `${user.id}:${idempotency.key}`
      const outbox = this.#outbox[user.bucket] as Map<string, OutboxMark>
      if (!outbox.has(member)) outbox.set(member, { userId: user.id, key: idempotency.key, member, since: now })
    }
    return { outcome, replayed: false, deniedIndex, context: idempotency?.context, current, limits }
  }

  /**
   * 0 when the user may store one more idempotency key, else ms until the oldest one expires. A
   * full user's keys are scanned once (expired ones dropped); until the earliest remaining one
   * expires no room can appear, so refusals meanwhile cost nothing.
   */
  #keyRoomWait(user: UserState, time: number): number {
    const cap = this.#keysPerUser
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

  #resetNow(userId: string, dayName: string, now: number, time: number, metrics: readonly MetricName[]): null | typeof NEEDS_LOAD {
    const user = this.#users.get(userId)
    if (user === undefined || !(user.gaugeAt > time)) return NEEDS_LOAD
    let day = this.#dayOf(user, dayName, time)
    if (day === undefined && this.#mayHaveBeenLost(dayName)) return NEEDS_LOAD
    for (const m of metrics) {
      if (m === 'storage') {
        user.gauge = 0
        this.#renewGauge(user, time)
      }
    }
    // A new day state records the gauge as it stands (zeroed just above if storage is reset).
    day ??= this.#newDay(user, dayName, now, time, [0, 0, 0, user.gauge], 0)
    for (const m of metrics) day.counts[INDEX[m] as 0 | 1 | 2 | 3] = 0
    day.version++
    if (!day.dirty) this.#markDirty(user, day, now)
    return null
  }

  /**
   * Runs `attempt` after the user's calls queued before it, loading from the history whenever it
   * needs to: the user's calls stay in order and each runs whole, across the loader's await.
   */
  #queue<T>(userId: string, day: string, now: number, attempt: Attempt<T>, key?: string): Promise<T> {
    const user = this.#user(userId)
    const run = (): Promise<T> => this.#runWithLoads(user, userId, day, now, attempt, key)
    const result = user.tail === undefined ? run() : user.tail.then(run)
    const tail = result.then(noop, noop)
    user.tail = tail
    void tail.then(() => {
      if (user.tail !== tail) return
      user.tail = undefined
      user.loadFailure = undefined
      this.#dropIfEmpty(user, this.#clock.now())
    })
    return result
  }

  async #runWithLoads<T>(queued: UserState, userId: string, day: string, now: number, attempt: Attempt<T>, key: string | undefined): Promise<T> {
    let keyChecked = false
    for (let loads = 0; ; loads++) {
      const time = this.#clock.now()
      const result = attempt(time, keyChecked)
      if (result === NEEDS_KEY) {
        keyChecked = true
        await this.#restoreKey(userId, key as string, now)
        continue
      }
      if (result !== NEEDS_LOAD) return result
      if (queued.loadFailure !== undefined) throw queued.loadFailure
      if (loads >= MAX_LOAD_ATTEMPTS) throw new CounterUnavailableError('counter state could not be rebuilt from the history')
      const loader = this.#loader
      if (loader === undefined) {
        this.#seed(userId, day, now, time, EMPTY_STATE)
        continue
      }
      let state: SeedState
      try {
        state = await loader(userId, day)
      } catch (err) {
        const failure = err instanceof CounterUnavailableError
          ? err
          : new CounterUnavailableError(`counter state could not be rebuilt from the history: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
        queued.loadFailure = failure
        throw failure
      }
      this.#seed(userId, day, now, this.#clock.now(), state)
    }
  }

  /** Puts back an answer the history kept under the key, unless one is here (a call stored it meanwhile). */
  async #restoreKey(userId: string, key: string, now: number): Promise<void> {
    const loader = this.#keyLoader
    if (loader === undefined) return
    let kept: KeptAnswerText | undefined
    try {
      kept = await loader(userId, key)
    } catch (err) {
      throw err instanceof CounterUnavailableError
        ? err
        : new CounterUnavailableError(`an idempotent answer could not be read from the history: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
    }
    if (kept === undefined || kept.expiresAt <= now) return
    let decoded: ReturnType<typeof decodeAnswer>
    try {
      decoded = decodeAnswer(kept.answer)
    } catch {
      decoded = undefined // not an answer this store can replay: the call counts as new
    }
    if (decoded === undefined) return
    const time = this.#clock.now()
    const user = this.#user(userId)
    const held = user.keys?.get(key)
    if (held !== undefined && held.at > time) return
    // It lives what it has left, as the history counts it.
    const record: KeyRecord = { at: time + (kept.expiresAt - now), kind: KEY_KIND, user, key, ...decoded }
    ;(user.keys ??= new Map()).set(key, record)
    this.#expiry.push(record)
  }

  /** Puts loaded state in place, never over state that exists (it may have been loaded and spent meanwhile). */
  #seed(userId: string, day: string, now: number, time: number, state: SeedState): void {
    const user = this.#user(userId)
    if (!(user.gaugeAt > time)) {
      user.gauge = seedable(state.gauge)
      this.#renewGauge(user, time)
    }
    if (this.#dayOf(user, day, time) === undefined) {
      const c = state.counts
      const version = Number.isSafeInteger(state.version) && state.version > 0 ? state.version : 0
      this.#newDay(user, day, now, time, [seedable(c.deployments), seedable(c.api_calls), seedable(c.compute_hours), seedable(c.storage)], version)
    }
    // From now on a missing day state is a fresh day only for days starting later (by the
    // requests' time, which days are named in).
    this.#epoch ??= now
  }
}

function replay(record: KeyRecord, fingerprint: string, context: AnswerContext): DecisionAnswer {
  if (record.fingerprint !== fingerprint) {
    return { outcome: 'key-reused', replayed: false, deniedIndex: -1, context, current: [], limits: [] }
  }
  return {
    outcome: record.outcome, replayed: true, deniedIndex: record.deniedIndex,
    context: { day: record.context.day, tier: record.context.tier }, current: record.current.slice(), limits: record.limits.slice(),
  }
}

/**
 * An answer as the Redis store stores it — "fingerprint,status,denied,cur..,lim..,context" with
 * status 1 allowed / 0 denied, denied 1-based (0 none), -1 for an unlimited limit and the context
 * as JSON — so the history holds one format whichever store wrote it.
 */
function encodeAnswer(record: KeyRecord): string {
  let text = `${record.fingerprint},${record.outcome === 'allowed' ? 1 : 0},${record.deniedIndex + 1}`
  for (const c of record.current) text += `,${c}`
  for (const l of record.limits) text += `,${l ?? -1}`
  return `${text},${JSON.stringify([record.context.day, record.context.tier])}`
}

const INTEGER = /^-?\d+$/

/** Reads encodeAnswer's text (also a context stored as "<day> <tier>"); undefined when malformed. */
function decodeAnswer(text: string): Pick<KeyRecord, 'fingerprint' | 'outcome' | 'deniedIndex' | 'current' | 'limits' | 'context'> | undefined {
  const parts = text.split(',')
  const numbers: number[] = []
  let i = 1
  for (; i < parts.length && INTEGER.test(parts[i] as string); i++) numbers.push(Number(parts[i]))
  const n = (numbers.length - 2) / 2
  if (i >= parts.length || !Number.isInteger(n) || n < 1) return undefined
  const contextText = parts.slice(i).join(',')
  let context: AnswerContext
  if (contextText.startsWith('[')) {
    const [day, tier] = JSON.parse(contextText) as [string, string]
    context = { day, tier }
  } else {
    const space = contextText.indexOf(' ')
    context = { day: contextText.slice(0, space), tier: contextText.slice(space + 1) }
  }
  return {
    fingerprint: parts[0] as string,
    outcome: numbers[0] === 1 ? 'allowed' : 'denied',
    deniedIndex: (numbers[1] as number) - 1,
    current: numbers.slice(2, 2 + n),
    limits: numbers.slice(2 + n, 2 + 2 * n).map((l) => (l < 0 ? null : l)),
    context,
  }
}

function countsOf(state: DayState): MetricCounts {
  const [deployments, api_calls, compute_hours, storage] = state.counts
  return { deployments, api_calls, compute_hours, storage }
}

/**
 * The CounterStore in the process (embedded mode: no Redis). Same answers as the Redis store —
 * the conformance suite runs against both — with the state in Maps, each in a module of its own:
 *
 *   users          user-state.ts: userId -> UserState, the storage gauge and its expiry, the
 *                  user's day states (day -> counts and version), idempotency records (key ->
 *                  stored answer, idempotency.ts); the expiry queue of all of them
 *   dirty marks    dirty-marks.ts: one Map per bucket (bucket-marks.ts), "<user>:<day>" -> ms of
 *                  the first unflushed change
 *   key outbox     key-outbox.ts: one Map per bucket, "<user>:<key>" -> ms stored: idempotent
 *                  answers the flusher has not copied to the history yet
 *   loads          history-loads.ts: the epoch, the loaders, and each user's queue of calls
 *                  waiting for the history
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
import { startOfUtcDay, systemClock } from '../../clock.ts'
import type { Clock } from '../../clock.ts'
import { MAX_TOTAL_MICRO } from '../../metrics.ts'
import type { MetricName } from '../../metrics.ts'
import type {
  CounterStore, DecisionAnswer, DecisionMode, DecisionRequest, DirtyUserDay, HoldRequest, KeyLoader, MetricAmount, PendingKey,
  SeedLoader, ThresholdCrossing, WrittenUserDay,
} from '../store.ts'
import { checkHoldRequest } from '../hold-request.ts'
import { clearCrossed, crossingRef, updateCrossed } from '../thresholds.ts'
import { CrossingOutbox } from './crossing-outbox.ts'
import { DayHolds } from './holds.ts'
import { reservedOf, settleHold } from './settle-hold.ts'
import { DirtyMarks } from './dirty-marks.ts'
import { HistoryLoads, NEEDS_KEY, NEEDS_LOAD } from './history-loads.ts'
import { DEFAULT_IDEMPOTENCY_KEYS_PER_USER, answerRecord, keyRoomWait, liveKey, replay } from './idempotency.ts'
import { KeyOutbox } from './key-outbox.ts'
import { INDEX, STORAGE, UserTable } from './user-state.ts'
import type { DayState, UserState } from './user-state.ts'

export interface MemoryCounterStoreOptions {
  /**
   * Reads a user-day from the history when this store does not hold it (after a start). Without
   * one, such state counts from 0.
   */
  loader?: SeedLoader
  /**
   * Reads an answer the history kept under a user's idempotency key. Asked only in the first 24 h
   * after the epoch. Without one, such keys count as new.
   */
  keyLoader?: KeyLoader
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
  checkHoldRequest(req)
}

function noop(): void {}

export class MemoryCounterStore implements CounterStore {
  readonly #keysPerUser: number
  readonly #users = new UserTable()
  readonly #dirty = new DirtyMarks()
  readonly #outbox = new KeyOutbox()
  readonly #crossings = new CrossingOutbox()
  readonly #loads: HistoryLoads
  readonly #clock: Clock

  constructor(options: MemoryCounterStoreOptions = {}) {
    this.#clock = options.clock ?? systemClock
    this.#loads = new HistoryLoads(this.#users, this.#clock, options.loader, options.keyLoader)
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
    this.#users.clear()
    this.#dirty.clear()
    this.#outbox.clear()
    this.#crossings.clear()
    this.#loads.forget()
  }

  size(): MemoryStoreSize {
    const { users, days, idempotencyKeys, queued } = this.#users.size()
    return { users, days, idempotencyKeys, dirty: this.#dirty.size, pendingKeys: this.#outbox.size, queued }
  }

  decide(request: DecisionRequest): Promise<DecisionAnswer> {
    try {
      checkRequest(request)
      const time = this.#clock.now()
      this.#users.sweepSome(time)
      const attempt = (t: number, keyChecked: boolean): DecisionAnswer | typeof NEEDS_LOAD | typeof NEEDS_KEY =>
        this.#decideNow(request, t, keyChecked)
      const answer = this.#loads.tryNow(request.userId, request.day, request.now, time, attempt)
      if (answer !== NEEDS_LOAD && answer !== NEEDS_KEY) return Promise.resolve(answer)
      return this.#loads.queue(request.userId, request.day, request.now, attempt, request.idempotency?.key)
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
      this.#users.sweepSome(time)
      const attempt = (t: number): null | typeof NEEDS_LOAD => this.#resetNow(userId, day, now, t, metrics)
      if (this.#loads.tryNow(userId, day, now, time, attempt) !== NEEDS_LOAD) return Promise.resolve()
      return this.#loads.queue(userId, day, now, attempt).then(noop)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  async readDirty(maxPerBucket: number): Promise<DirtyUserDay[]> {
    const time = this.#clock.now()
    this.#users.sweepMany(time)
    return this.#dirty.read(maxPerBucket, this.#users, time)
  }

  async acknowledge(bucket: number, written: readonly WrittenUserDay[], readAt = 0): Promise<number> {
    return this.#dirty.acknowledge(bucket, written, readAt, this.#users, this.#clock.now())
  }

  async readPendingKeys(maxPerBucket: number): Promise<PendingKey[]> {
    return this.#outbox.read(maxPerBucket, this.#users, this.#clock.now())
  }

  async acknowledgeKeys(bucket: number, keys: readonly { userId: string; key: string }[]): Promise<number> {
    return this.#outbox.acknowledge(bucket, keys)
  }

  async readCrossings(maxPerBucket: number): Promise<ThresholdCrossing[]> {
    return this.#crossings.read(maxPerBucket)
  }

  async acknowledgeCrossings(bucket: number, refs: readonly string[]): Promise<number> {
    return this.#crossings.acknowledge(bucket, refs)
  }

  async oldestDirty(): Promise<number | null> {
    return this.#dirty.oldest()
  }

  async dirtyCounts(): Promise<number[]> {
    return this.#dirty.counts()
  }

  /** One decision, synchronously; NEEDS_LOAD when the user's state must come from the history first. */
  #decideNow(req: DecisionRequest, time: number, keyChecked: boolean): DecisionAnswer | typeof NEEDS_LOAD | typeof NEEDS_KEY {
    const { mode, now, metrics, idempotency } = req
    const user = this.#users.get(req.userId)
    // Commits and cancels are idempotent by their reservation; keys are stored by the others.
    const storesKey = idempotency !== undefined && (mode === 'consume' || mode === 'increment' || mode === 'reserve')
    if (idempotency !== undefined) {
      const record = liveKey(user, idempotency.key, time)
      if (record !== undefined) return replay(record, idempotency.fingerprint, idempotency.context)
    }
    if (user === undefined) return NEEDS_LOAD

    let day = this.#users.dayOf(user, req.day, time)
    const n = metrics.length
    let hasStorage = false
    for (let i = 0; i < n; i++) if ((metrics[i] as DecisionRequest['metrics'][number]).metric === 'storage') hasStorage = true
    if (hasStorage || day === undefined) {
      if (!(user.gaugeAt > time)) return NEEDS_LOAD
      if (day === undefined && this.#loads.mayHaveBeenLost(req.day)) return NEEDS_LOAD
    }
    if (mode === 'commit' || mode === 'cancel') return settleHold(req, day, (d, current) => this.#apply(req, user, d, current, 'increment', time))
    if (storesKey) {
      if (!keyChecked && this.#loads.mayHaveKeptKey(req.now)) return NEEDS_KEY
      const wait = keyRoomWait(user, time, this.#keysPerUser)
      if (wait > 0) {
        return { outcome: 'too-many-keys', replayed: false, deniedIndex: -1, retryAfterMs: wait, context: idempotency.context, current: [], limits: [] }
      }
    }

    const holds = day?.holds
    holds?.expire(now)
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
    if (mode === 'check' || mode === 'consume' || mode === 'reserve') {
      for (let i = 0; i < n; i++) {
        const m = metrics[i] as DecisionRequest['metrics'][number]
        const held = holds === undefined || m.metric === 'storage' ? 0 : holds.held[INDEX[m.metric] as 0 | 1 | 2]
        // A negative limit reads as unlimited, as the Redis store's -1 does.
        if (m.limit !== null && m.limit >= 0 && (current[i] as number) + held + m.amount > m.limit) {
          outcome = 'denied'
          deniedIndex = i
          break
        }
      }
    }
    if (outcome === 'allowed' && (mode === 'consume' || mode === 'increment' || mode === 'reserve')) {
      // Past its limit is an ordinary denial; the ceiling refuses only what would be admitted.
      for (let i = 0; i < n; i++) {
        const m = metrics[i] as DecisionRequest['metrics'][number]
        const held = mode === 'reserve' && holds !== undefined ? holds.held[INDEX[m.metric] as 0 | 1 | 2] : 0
        if (m.amount > 0 && (current[i] as number) + held + m.amount > MAX_TOTAL_MICRO) {
          return { outcome: 'too-large', replayed: false, deniedIndex: i, context: idempotency?.context, current: [], limits: [] }
        }
      }
    }
    if (outcome === 'allowed' && mode === 'reserve') {
      day ??= this.#users.newDay(user, req.day, now, time, [0, 0, 0, user.gauge], 0)
      const hold = req.hold as HoldRequest
      ;(day.holds ??= new DayHolds()).add(hold.id, INDEX[(metrics[0] as MetricAmount).metric] as number, (metrics[0] as MetricAmount).amount, hold.expiresAt)
    } else if (outcome === 'allowed' && mode !== 'check') {
      day = this.#apply(req, user, day, current, mode, time)
    }

    if (storesKey) {
      this.#users.keepKey(user, answerRecord(user, time, idempotency, outcome, deniedIndex, current, limits))
      // For the flusher, which copies the answer to the history: it outlives a restart.
      this.#outbox.add(user, idempotency.key, now)
    }
    const answer: DecisionAnswer = { outcome, replayed: false, deniedIndex, context: idempotency?.context, current, limits }
    const reserved = reservedOf(day, metrics)
    if (reserved !== undefined) answer.reserved = reserved
    return answer
  }

  /**
   * Applies a decision's amounts to `current` (the values before it, in request order) and the
   * user's day (created when missing): counts, gauge, version, dirty mark and threshold crossings.
   */
  #apply(
    req: DecisionRequest, user: UserState, existing: DayState | undefined, current: number[], mode: DecisionMode, time: number,
  ): DayState {
    const { now, metrics } = req
    const n = metrics.length
    const sign = mode === 'refund' ? -1 : 1
    let hasStorage = false
    for (let i = 0; i < n; i++) {
      const m = metrics[i] as MetricAmount
      if (m.metric === 'storage') hasStorage = true
      const v = (current[i] as number) + sign * m.amount
      current[i] = v < 0 ? 0 : v // a refund or a storage decrement never goes below 0
    }
    let day = existing
    if (day === undefined) {
      // The day's row records the gauge as it stands that day; the user is active: keep the gauge.
      day = this.#users.newDay(user, req.day, now, time, [0, 0, 0, user.gauge], 0)
      if (!hasStorage) this.#users.renewGauge(user, time)
    } else if (day.version === 0 && !hasStorage) {
      // A day a reservation opened: its first use keeps the gauge, as a new day's does.
      this.#users.renewGauge(user, time)
    }
    const dayCounts = day.counts
    for (let i = 0; i < n; i++) {
      const m = metrics[i] as MetricAmount
      const index = INDEX[m.metric] as number
      const v = current[i] as number
      const before = dayCounts[index as 0 | 1 | 2 | 3]
      dayCounts[index as 0 | 1 | 2 | 3] = v
      if (index === STORAGE) {
        user.gauge = v
        this.#users.renewGauge(user, time)
      } else if (m.limit !== null && m.limit >= 0) {
        const state = day
        state.crossed = updateCrossed(state.crossed, index, before, v, m.limit, (percent) => {
          this.#crossings.add(user, crossingRef(user.id, state.day, index, percent, v, m.limit as number), now)
        })
      }
    }
    day.version++
    if (!day.dirty) this.#dirty.mark(user, day, now)
    return day
  }

  #resetNow(userId: string, dayName: string, now: number, time: number, metrics: readonly MetricName[]): null | typeof NEEDS_LOAD {
    const user = this.#users.get(userId)
    if (user === undefined || !(user.gaugeAt > time)) return NEEDS_LOAD
    let day = this.#users.dayOf(user, dayName, time)
    if (day === undefined && this.#loads.mayHaveBeenLost(dayName)) return NEEDS_LOAD
    for (const m of metrics) {
      if (m === 'storage') {
        user.gauge = 0
        this.#users.renewGauge(user, time)
      }
    }
    // A new day state records the gauge as it stands (zeroed just above if storage is reset).
    day ??= this.#users.newDay(user, dayName, now, time, [0, 0, 0, user.gauge], 0)
    for (const m of metrics) day.counts[INDEX[m] as 0 | 1 | 2 | 3] = 0
    // Zeroed metrics can reach their thresholds again.
    day.crossed = clearCrossed(day.crossed, metrics.map((m) => INDEX[m] as number).filter((i) => i !== STORAGE))
    day.version++
    if (!day.dirty) this.#dirty.mark(user, day, now)
    return null
  }
}

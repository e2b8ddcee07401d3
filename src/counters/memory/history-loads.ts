/**
 * Loading lost state from the history. The memory store starts empty (a process start, or
 * clear()). A call that needs a user's gauge, or a day state that may have existed before this
 * store's epoch (the first rebuild), asks the loader — the history — once, then runs. For 24 h
 * after the epoch, a call that would store a new idempotency key first asks the key loader whether
 * the history kept an answer under it (given before the start), and replays that one if so.
 *
 * A user's calls stay atomic and in order across those waits: while one is pending, that user's
 * calls queue behind it (UserState.tail); a user whose state is here runs synchronously.
 */
import type { Clock } from '../../clock.ts'
import { startOfUtcDay } from '../../clock.ts'
import { MAX_TOTAL_MICRO } from '../../metrics.ts'
import { CounterUnavailableError } from '../errors.ts'
import type { KeptAnswer, KeyLoader, SeedLoader, SeedState } from '../store.ts'
import { IDEMPOTENCY_TTL_MS, decodeAnswer } from './idempotency.ts'
import { KEY_KIND } from './user-state.ts'
import type { KeyRecord, UserState, UserTable } from './user-state.ts'

/** Loads one call tries before giving up (each one leaves the state it loaded, so one is enough). */
const MAX_LOAD_ATTEMPTS = 3

/** Marks a call that must wait for the history before it can run. */
export const NEEDS_LOAD: unique symbol = Symbol('needs-load')
/** Marks a call that must ask the history for its idempotency key's answer before it can run. */
export const NEEDS_KEY: unique symbol = Symbol('needs-key')
/** One try of a call at the store's time `time`; `keyChecked`: the key loader was asked already. */
export type Attempt<T> = (time: number, keyChecked: boolean) => T | typeof NEEDS_LOAD | typeof NEEDS_KEY

/** A loaded value as a counter can hold it: whole micro-units in 0..MAX_TOTAL_MICRO. */
function seedable(micro: number): number {
  if (Number.isNaN(micro)) return MAX_TOTAL_MICRO
  return Math.min(MAX_TOTAL_MICRO, Math.max(0, Math.ceil(micro)))
}

const EMPTY_STATE: SeedState = { counts: { deployments: 0, api_calls: 0, compute_hours: 0, storage: 0 }, version: 0, gauge: 0 }

function noop(): void {}

export class HistoryLoads {
  readonly #users: UserTable
  readonly #clock: Clock
  readonly #loader: SeedLoader | undefined
  readonly #keyLoader: KeyLoader | undefined
  /**
   * When this store first rebuilt state (ms, callers' clock); undefined until then. A missing day
   * state is a fresh day only for days starting after it: an earlier day may have been counted
   * before the store started, and the history knows.
   */
  #epoch: number | undefined

  constructor(users: UserTable, clock: Clock, loader: SeedLoader | undefined, keyLoader: KeyLoader | undefined) {
    this.#users = users
    this.#clock = clock
    this.#loader = loader
    this.#keyLoader = keyLoader
  }

  /** Back to no epoch, as after a process start (the store forgot everything). */
  forget(): void {
    this.#epoch = undefined
  }

  /** Whether a missing day state may be one the history holds (a day that started before the epoch). */
  mayHaveBeenLost(day: string): boolean {
    const epoch = this.#epoch
    return epoch === undefined || epoch > startOfUtcDay(day)
  }

  /**
   * Whether a key missing here, in a call at `now`, may have been answered before the start: in
   * the first 24 h after the epoch the history may keep that answer. Never otherwise.
   */
  mayHaveKeptKey(now: number): boolean {
    const epoch = this.#epoch
    return this.#keyLoader !== undefined && epoch !== undefined && epoch > now - IDEMPOTENCY_TTL_MS
  }

  /**
   * `attempt` run at `time` when the user's calls wait for nothing (without a loader, lost state
   * counts from 0 at once); NEEDS_LOAD or NEEDS_KEY when the call must be queued instead.
   */
  tryNow<T>(userId: string, day: string, now: number, time: number, attempt: Attempt<T>): T | typeof NEEDS_LOAD | typeof NEEDS_KEY {
    const user = this.#users.get(userId)
    if (user !== undefined && user.tail !== undefined) return NEEDS_LOAD
    let result = attempt(time, false)
    if (result === NEEDS_LOAD && this.#loader === undefined) {
      this.#seed(userId, day, now, time, EMPTY_STATE)
      result = attempt(time, false)
    }
    return result
  }

  /**
   * Runs `attempt` after the user's calls queued before it, loading from the history whenever it
   * needs to: the user's calls stay in order and each runs whole, across the loader's await.
   */
  queue<T>(userId: string, day: string, now: number, attempt: Attempt<T>, key?: string): Promise<T> {
    const user = this.#users.user(userId)
    const run = (): Promise<T> => this.#runWithLoads(user, userId, day, now, attempt, key)
    const result = user.tail === undefined ? run() : user.tail.then(run)
    const tail = result.then(noop, noop)
    user.tail = tail
    void tail.then(() => {
      if (user.tail !== tail) return
      user.tail = undefined
      user.loadFailure = undefined
      this.#users.dropIfEmpty(user, this.#clock.now())
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
    let kept: KeptAnswer | undefined
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
    const user = this.#users.user(userId)
    const held = user.keys?.get(key)
    if (held !== undefined && held.at > time) return
    // It lives what it has left, as the history counts it.
    const record: KeyRecord = { at: time + (kept.expiresAt - now), kind: KEY_KIND, user, key, ...decoded }
    this.#users.keepKey(user, record)
  }

  /** Puts loaded state in place, never over state that exists (it may have been loaded and spent meanwhile). */
  #seed(userId: string, day: string, now: number, time: number, state: SeedState): void {
    const users = this.#users
    const user = users.user(userId)
    if (!(user.gaugeAt > time)) {
      user.gauge = seedable(state.gauge)
      users.renewGauge(user, time)
    }
    if (users.dayOf(user, day, time) === undefined) {
      const c = state.counts
      const version = Number.isSafeInteger(state.version) && state.version > 0 ? state.version : 0
      users.newDay(user, day, now, time, [seedable(c.deployments), seedable(c.api_calls), seedable(c.compute_hours), seedable(c.storage)], version)
    }
    // From now on a missing day state is a fresh day only for days starting later (by the
    // requests' time, which days are named in).
    this.#epoch ??= now
  }
}

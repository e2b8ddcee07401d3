/**
 * The counter store: the only code that knows the Lua scripts. Amounts and limits are integer
 * micro-units; the store knows nothing of tiers or HTTP. Decisions go through the
 * DecisionBatcher (one script call per bucket per event-loop turn); the flusher's reads and
 * acks, seeds and resets are one script call each.
 */
import { readFileSync } from 'node:fs'
import type { Redis, Result } from 'ioredis'
import { DAY_MS, dayStartOfDay } from '../clock.ts'
import { BUCKETS, KeySpace, bucketOf, dirtyMember, parseDirtyMember } from './keys.ts'
import { DecisionBatcher } from './decision-batcher.ts'
import { CounterUnavailableError, classify } from './errors.ts'
import { mapLimited } from '../limited.ts'

export { CounterUnavailableError }

export type Field = 'd' | 'a' | 'c' | 's'
export type Mode = 'check' | 'consume' | 'increment' | 'refund'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    quotaSeed(...args: (string | number)[]): Result<number, Context>
    quotaReset(...args: (string | number)[]): Result<number, Context>
    quotaAck(numKeys: number, ...args: (string | number)[]): Result<number, Context>
    quotaRead(numKeys: number, ...keys: string[]): Result<string, Context>
  }
}

const script = (name: string): string => readFileSync(new URL(`./scripts/${name}.lua`, import.meta.url), 'utf8')
const SCRIPTS = {
  quotaSeed: { lua: script('seed'), numberOfKeys: 3 },
  quotaReset: { lua: script('reset'), numberOfKeys: 4 },
  quotaAck: { lua: script('ack') },
  quotaRead: { lua: script('read'), readOnly: true },
} as const

/** Idempotency keys are kept 24 h (DESIGN 1.8). */
export const IDEMPOTENCY_TTL_S = 86_400
/** A day hash lives until 2 days after its day ends: time enough for the flusher to catch up. */
const DAY_KEY_LIFETIME_MS = 3 * DAY_MS
const MAX_LOAD_ATTEMPTS = 3
/** The flusher's bucket scripts in flight at once (see mapLimited). */
export const FLUSH_SCRIPTS_IN_FLIGHT = 2


/** Seconds a new day hash lives, from `now` on the caller's clock; at least one minute. */
function dayKeyTtlSeconds(day: string, now: number): number {
  return Math.max(60, Math.ceil((dayStartOfDay(day) + DAY_KEY_LIFETIME_MS - now) / 1000))
}

export interface ApplyItem {
  field: Field
  /** Micro-units; negative only to lower the storage gauge (an increment of deleted data). */
  amount: number
  /** Micro-units; null = unlimited. */
  limit: number | null
}

export interface ApplyRequest {
  mode: Mode
  userId: string
  /** UTC day `YYYY-MM-DD` the decision counts for. */
  day: string
  /** Decision time (ms, from the injectable clock). */
  now: number
  items: ApplyItem[]
  idempotencyKey?: string
  /** Stored with an idempotent result and returned on replay (the tier). */
  context?: string
  /** Identifies the request's parameters, to refuse a key reused for another request. */
  fingerprint?: string
  /**
   * Gives the Redis-server time (ms) after which the script must not apply anything. Called right
   * before each send, so a rebuild from Postgres in between does not eat the budget.
   */
  deadline?: () => number
}

export interface ApplyResult {
  /** allowed: admitted (and applied unless checking); denied: nothing changed; conflict: key reused. */
  outcome: 'allowed' | 'denied' | 'conflict'
  /** The answer was replayed from the idempotency key; nothing was counted. */
  replayed: boolean
  /** Index into items of the first denied metric, -1 when none. */
  deniedIndex: number
  context: string
  /** Values after the call (before it when denied or checked), micro-units. */
  current: number[]
  /** Limits the decision used, micro-units; null = unlimited. */
  limits: (number | null)[]
}

/** A user-day as Postgres remembers it, to rebuild Redis after data loss. Micro-units. */
export interface SeedState {
  d: number
  a: number
  c: number
  /** The day's recorded storage. */
  s: number
  version: number
  /** The current storage gauge. */
  gauge: number
}

export type StateLoader = (userId: string, day: string) => Promise<SeedState>

export interface DirtyEntry {
  bucket: number
  member: string
  userId: string
  day: string
  /** When the oldest unflushed change of this user-day happened (ms). */
  since: number
  /** Current values, or null when the day hash is gone (expired). */
  values: { d: number; a: number; c: number; s: number; v: number } | null
}

const DAY = /^\d{4}-\d{2}-\d{2}$/

/**
 * Arguments a script would choke on fail here, before anything is sent: a script that errors
 * part-way fails every decision of its call, although those before it were applied.
 */
function checkApplyRequest(req: ApplyRequest): void {
  if (!DAY.test(req.day) || Number.isNaN(dayStartOfDay(req.day))) throw new TypeError(`day must be YYYY-MM-DD, got "${req.day}"`)
  if (!Number.isSafeInteger(req.now)) throw new TypeError('now must be epoch milliseconds')
  for (const item of req.items) {
    if (!Number.isSafeInteger(item.amount)) throw new TypeError(`amount must be a whole number of micro-units, got ${item.amount}`)
    if (item.limit !== null && !Number.isSafeInteger(item.limit)) throw new TypeError(`limit must be a whole number of micro-units or null, got ${item.limit}`)
  }
  if (req.items.length === 0) throw new TypeError('at least one item is required')
}

export interface RedisCounterStoreOptions {
  /** Prefix of every key. @default 'quota:' */
  prefix?: string
  /** Reads a user-day from Postgres when Redis lost it. Without one, lost state counts from 0. */
  loader?: StateLoader
}

export class RedisCounterStore {
  readonly keys: KeySpace
  readonly #loader: StateLoader | undefined
  readonly #seeding = new Map<string, Promise<void>>()
  readonly #batcher: DecisionBatcher

  constructor(
    readonly redis: Redis,
    options: RedisCounterStoreOptions = {},
  ) {
    this.keys = new KeySpace(options.prefix ?? 'quota:')
    this.#loader = options.loader
    this.#batcher = new DecisionBatcher(redis, this.keys)
    for (const [name, definition] of Object.entries(SCRIPTS)) {
      if (!(name in redis)) redis.defineCommand(name, definition)
    }
  }

  async apply(req: ApplyRequest): Promise<ApplyResult> {
    checkApplyRequest(req)
    const bucket = bucketOf(req.userId)
    const keys = [this.keys.day(req.userId, req.day, bucket), this.keys.gauge(req.userId, bucket)]
    if (req.idempotencyKey !== undefined) keys.push(this.keys.idempotency(req.userId, req.idempotencyKey, bucket))
    // decide.lua's JSON items after the first two (see its header): numbers, a mode word and
    // field letters (typed unions), and the member, escaped like any string that came from outside.
    let words = `"${req.mode}","${req.now}",${dayStartOfDay(req.day)},"${dayKeyTtlSeconds(req.day, req.now)}",${JSON.stringify(dirtyMember(req.userId, req.day))},"${IDEMPOTENCY_TTL_S}",${req.items.length}`
    for (const item of req.items) words += `,"${item.field}",${item.amount},${item.limit ?? -1}`
    const decision = {
      bucket,
      keys,
      words,
      idempotent: req.idempotencyKey === undefined ? undefined : [req.context ?? '', req.fingerprint ?? ''] as [string, string],
      items: req.items,
      context: req.context ?? '',
      deadline: req.deadline,
    }
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.#batcher.decide(decision)
      if (outcome === 'lost' && attempt < MAX_LOAD_ATTEMPTS) {
        await this.#seed(req.userId, req.day, req.now)
        continue
      }
      if (outcome === 'lost') throw new CounterUnavailableError('redis state could not be rebuilt from postgres')
      if (outcome === 'late') throw new CounterUnavailableError('decision deadline passed before redis ran it')
      return outcome
    }
  }

  /**
   * Rebuilds a user's state from Postgres (only after Redis lost it). Concurrent callers for the
   * same user-day share one Postgres read and one seed.
   */
  #seed(userId: string, day: string, now: number): Promise<void> {
    const key = `${userId}:${day}`
    const pending = this.#seeding.get(key)
    if (pending) return pending
    const run = this.#seedOnce(userId, day, now).finally(() => this.#seeding.delete(key))
    this.#seeding.set(key, run)
    return run
  }

  async #seedOnce(userId: string, day: string, now: number): Promise<void> {
    const state: SeedState = this.#loader
      ? await this.#loader(userId, day)
      : { d: 0, a: 0, c: 0, s: 0, version: 0, gauge: 0 }
    const bucket = bucketOf(userId)
    try {
      await this.redis.quotaSeed(
        this.keys.day(userId, day, bucket),
        this.keys.gauge(userId, bucket),
        this.keys.epoch(bucket),
        state.d, state.a, state.c, state.s, state.version, state.gauge,
        dayKeyTtlSeconds(day, now),
        now,
      )
    } catch (err) {
      throw classify(err)
    }
  }

  /** Zeroes `fields` of a user's day (admin reset). */
  async reset(userId: string, day: string, now: number, fields: Field[]): Promise<void> {
    const bucket = bucketOf(userId)
    for (let attempt = 1; ; attempt++) {
      let status: number
      try {
        status = await this.redis.quotaReset(
          this.keys.day(userId, day, bucket),
          this.keys.gauge(userId, bucket),
          this.keys.dirty(bucket),
          this.keys.epoch(bucket),
          now,
          dayStartOfDay(day),
          dayKeyTtlSeconds(day, now),
          dirtyMember(userId, day),
          ...fields,
        )
      } catch (err) {
        throw classify(err)
      }
      if (status === 1) return
      if (attempt >= MAX_LOAD_ATTEMPTS) throw new CounterUnavailableError('redis state could not be rebuilt')
      await this.#seed(userId, day, now)
    }
  }

  /**
   * Up to `maxPerBucket` dirty user-days of every bucket, oldest first, with their current
   * values: two round trips whatever the number of buckets (one pipeline of ZRANGE, one of HMGET).
   */
  async readDirty(maxPerBucket: number): Promise<DirtyEntry[]> {
    try {
      const ranges = this.redis.pipeline()
      for (let b = 0; b < BUCKETS; b++) ranges.zrange(this.keys.dirty(b), '0', String(maxPerBucket - 1), 'WITHSCORES')
      const rangeReplies = (await ranges.exec()) ?? []
      const members: Omit<DirtyEntry, 'values'>[] = []
      rangeReplies.forEach(([err, raw], bucket) => {
        if (err) throw err
        const flat = raw as string[]
        for (let i = 0; i < flat.length; i += 2) {
          const member = flat[i] as string
          const { userId, day } = parseDirtyMember(member)
          members.push({ bucket, member, userId, day, since: Number(flat[i + 1]) })
        }
      })
      if (members.length === 0) return []
      // One script call per bucket reads all its user-days (the keys share the bucket's slot):
      // far cheaper than an HMGET each, for Redis and for this process.
      const byBucket = new Map<number, Omit<DirtyEntry, 'values'>[]>()
      for (const m of members) {
        const list = byBucket.get(m.bucket) ?? []
        list.push(m)
        byBucket.set(m.bucket, list)
      }
      const out: DirtyEntry[] = []
      await mapLimited([...byBucket], FLUSH_SCRIPTS_IN_FLIGHT, async ([bucket, list]) => {
        const keys = list.map((m) => this.keys.day(m.userId, m.day, bucket))
        const packed = await this.redis.quotaRead(keys.length, ...keys)
        const rows = packed.split(';')
        list.forEach((m, i) => {
          const row = rows[i] ?? '-'
          if (row === '-') {
            out.push({ ...m, values: null })
            return
          }
          const [d, a, c, st, v] = row.split(',').map(Number) as [number, number, number, number, number]
          out.push({ ...m, values: { d, a, c, s: st, v } })
        })
      })
      return out
    } catch (err) {
      throw classify(err)
    }
  }

  /**
   * Removes flushed members from a bucket's dirty set unless they changed since `version`; those
   * stay, marked as dirty since `readAt` (what was read then is in Postgres now).
   */
  async ack(bucket: number, written: { userId: string; day: string; version: number }[], readAt = 0): Promise<number> {
    if (written.length === 0) return 0
    const keys = [this.keys.dirty(bucket), ...written.map((w) => this.keys.day(w.userId, w.day, bucket))]
    const args: (string | number)[] = [readAt, ...written.flatMap((w) => [dirtyMember(w.userId, w.day), w.version])]
    try {
      return await this.redis.quotaAck(keys.length, ...keys, ...args)
    } catch (err) {
      throw classify(err)
    }
  }

  /** Time (ms) of the oldest unflushed change over all buckets, or null when all is flushed. */
  async oldestDirty(): Promise<number | null> {
    try {
      const pipeline = this.redis.pipeline()
      for (let b = 0; b < BUCKETS; b++) pipeline.zrange(this.keys.dirty(b), '0', '0', 'WITHSCORES')
      const replies = (await pipeline.exec()) ?? []
      let oldest: number | null = null
      for (const [err, raw] of replies) {
        if (err) throw err
        const flat = raw as string[]
        if (flat.length >= 2) {
          const since = Number(flat[1])
          if (oldest === null || since < oldest) oldest = since
        }
      }
      return oldest
    } catch (err) {
      throw classify(err)
    }
  }

  /** Number of dirty user-days per bucket (flusher planning and tests). */
  async dirtyCounts(): Promise<number[]> {
    const pipeline = this.redis.pipeline()
    for (let b = 0; b < BUCKETS; b++) pipeline.zcard(this.keys.dirty(b))
    const replies = (await pipeline.exec()) ?? []
    return replies.map(([err, n]) => {
      if (err) throw classify(err)
      return Number(n)
    })
  }
}

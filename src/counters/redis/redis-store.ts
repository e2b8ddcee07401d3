/**
 * The CounterStore on Redis (standalone today; every key of a call shares one hash tag, so the
 * same calls run on a cluster). The only code that knows the Lua scripts and the key layout
 * (keys.ts). Decisions go through a ScriptBatcher (one decide.lua call per bucket per event-loop
 * turn); seeds, resets and the flusher's reads and acknowledgements are one script call each.
 *
 * Decision deadlines: a call that timed out here may still sit in Redis' socket buffer (Redis
 * paused, not dead) and run later, after the caller answered without it. With
 * `commandTimeoutMs`, every decision carries a deadline in Redis-server time (ServerClock) past
 * which decide.lua applies nothing.
 */
import type { ChainableCommander, Redis } from 'ioredis'
import { previousDay, startOfUtcDay } from '../../clock.ts'
import { mapLimited } from '../../limited.ts'
import { MAX_TOTAL_MICRO, METRIC_NAMES } from '../../metrics.ts'
import type { MetricName } from '../../metrics.ts'
import { CounterUnavailableError } from '../errors.ts'
import type {
  CounterStore, DecisionAnswer, DecisionRequest, DirtyUserDay, KeyLoader, MetricCounts, PendingKey, SeedLoader, SeedState,
  WrittenUserDay,
} from '../store.ts'
import { MAX_ITEMS_PER_CALL, ScriptBatcher } from './batcher.ts'
import type { BatchCodec } from './batcher.ts'
import { ServerClock } from './client.ts'
import { dayKeyTtlSeconds, decodeReply, encodeCall, encodeDecision } from './decide-protocol.ts'
import type { EncodedDecision, ScriptAnswer } from './decide-protocol.ts'
import { classify } from './errors.ts'
import {
  BUCKETS, KeySpace, POSITION, SHARDS, gaugePeriod, gaugeTtlSeconds, markMember, outboxMember, parseMarkMember, parseOutboxMember, slotOf,
} from './keys.ts'
import { legacyV1 } from './legacy-v1.ts'
import { LuaScript } from './lua-script.ts'

const SCRIPTS = {
  decide: LuaScript.fromFile('decide'),
  seed: LuaScript.fromFile('seed'),
  reset: LuaScript.fromFile('reset'),
  ack: LuaScript.fromFile('ack'),
  read: LuaScript.fromFile('read'),
  restoreKey: LuaScript.fromFile('restore-key'),
  legacyRead: LuaScript.fromFile('legacy-v1-read'),
  legacyAck: LuaScript.fromFile('legacy-v1-ack'),
  repairMarks: LuaScript.fromFile('repair-marks'),
}

/** How often readDirty also sweeps for lost marks (repair-marks.lua). */
export const MARK_REPAIR_INTERVAL_MS = 30_000
/** Days whose marks the sweep checks: the latest ones decisions were made on. */
const RECENT_DAYS = 3

/** Share of the command timeout within which Redis must have run a decision (see the constructor). */
export const DEADLINE_SHARE = 0.8

/** Seeding attempts of one decision before the store gives up (another replica keeps resetting). */
const MAX_SEED_ATTEMPTS = 3
/** The flusher's bucket scripts in flight at once (see mapLimited). */
export const FLUSH_SCRIPTS_IN_FLIGHT = 2

const DAY = /^\d{4}-\d{2}-\d{2}$/

/**
 * Arguments a script would choke on fail here, before anything is sent: a script that errors
 * part-way fails every decision of its call, although those before it were applied.
 */
function checkRequest(req: DecisionRequest): void {
  if (!DAY.test(req.day) || Number.isNaN(startOfUtcDay(req.day))) throw new TypeError(`day must be YYYY-MM-DD, got "${req.day}"`)
  if (!Number.isSafeInteger(req.now)) throw new TypeError('now must be epoch milliseconds')
  if (req.metrics.length === 0) throw new TypeError('at least one metric is required')
  for (const m of req.metrics) {
    if (!Number.isSafeInteger(m.amount)) throw new TypeError(`amount must be a whole number of micro-units, got ${m.amount}`)
    if (m.limit !== null && !Number.isSafeInteger(m.limit)) throw new TypeError(`limit must be a whole number of micro-units or null, got ${m.limit}`)
  }
}

export interface RedisCounterStoreOptions {
  /** Prefix of every key. @default 'quota:' */
  prefix?: string
  /** Reads a user-day from Postgres when Redis lost it. Without one, lost state counts from 0. */
  loader?: SeedLoader
  /**
   * Reads an idempotent answer from Postgres when a key is missing in the first 24 h after this
   * Redis lost (or first built) a bucket's state. Without one, such keys count as new.
   */
  keyLoader?: KeyLoader
  /**
   * REDIS_COMMAND_TIMEOUT_MS of the decision connection: decisions then carry a deadline in
   * Redis time, `start()` measures the clock offset. Without it, no deadline is sent.
   */
  commandTimeoutMs?: number
  /**
   * Command timeout of a second connection that `start()` opens for the flusher's large reads,
   * so they neither wait behind decisions nor make them wait. Without it, one connection.
   */
  bulkCommandTimeoutMs?: number
  /**
   * Most idempotency keys one user holds at once (IDEMPOTENCY_KEYS_PER_USER); 0 = no bound.
   * Each costs ~0.4 KB for 24 h, and denials and no-op increments store one too.
   * @default 10000
   */
  idempotencyKeysPerUser?: number
  /** Told the size of each decide.lua call and each decision timeout (the engine passes its Telemetry). */
  telemetry?: StoreTelemetry
}

/** The calls this store makes to the telemetry seam. */
export interface StoreTelemetry {
  batch(size: number): void
  commandTimeout(): void
}

/** Default of RedisCounterStoreOptions.idempotencyKeysPerUser. */
export const DEFAULT_IDEMPOTENCY_KEYS_PER_USER = 10_000

/** A seeded value as a counter can hold it: whole micro-units in 0..MAX_TOTAL_MICRO. */
function seedable(micro: number): number {
  if (Number.isNaN(micro)) return MAX_TOTAL_MICRO
  return Math.min(MAX_TOTAL_MICRO, Math.max(0, Math.ceil(micro)))
}

/** Per-call options only this store understands (tests: a decision's own deadline). */
export interface RedisDecideOptions {
  /** Redis-server time (ms) after which this decision must not be applied. */
  deadline?: () => number
}

export class RedisCounterStore implements CounterStore {
  readonly keys: KeySpace
  readonly #loader: SeedLoader | undefined
  readonly #keyLoader: KeyLoader | undefined
  readonly #seeding = new Map<string, Promise<void>>()
  readonly #batcher: ScriptBatcher<EncodedDecision, ScriptAnswer>
  readonly #serverClock: ServerClock | undefined
  readonly #deadline: (() => number) | undefined
  readonly #bulkCommandTimeoutMs: number | undefined
  readonly #keysPerUser: number
  readonly #telemetry: StoreTelemetry | undefined
  /**
   * User-days ("<user>:<day>") the last readDirty found in layout version 1 (an upgrade
   * draining): their acknowledgement goes to the v1 dirty set.
   */
  readonly #legacyRead = new Set<string>()
  /** The latest days decided on (newest last), for the lost-mark sweep. */
  readonly #recentDays: string[] = []
  #lastRepair = 0
  /** The flusher's connection: the decision one until start() opens its own. */
  #bulk: Redis

  constructor(
    readonly redis: Redis,
    options: RedisCounterStoreOptions = {},
  ) {
    this.keys = new KeySpace(options.prefix ?? 'quota:')
    this.#loader = options.loader
    this.#keyLoader = options.keyLoader
    this.#bulk = redis
    this.#bulkCommandTimeoutMs = options.bulkCommandTimeoutMs
    const keysPerUser = options.idempotencyKeysPerUser ?? DEFAULT_IDEMPOTENCY_KEYS_PER_USER
    if (!Number.isSafeInteger(keysPerUser) || keysPerUser < 0) {
      throw new TypeError(`idempotencyKeysPerUser must be a whole number >= 0, got ${keysPerUser}`)
    }
    this.#keysPerUser = keysPerUser
    const keys = this.keys
    const codec: BatchCodec<EncodedDecision, ScriptAnswer> = {
      script: SCRIPTS.decide,
      encode: (bucket, decisions) => encodeCall(keys, bucket, decisions),
      decode: (reply, decisions) => decodeReply(reply as (number | string)[], decisions),
    }
    const telemetry = options.telemetry
    this.#telemetry = telemetry
    this.#batcher = new ScriptBatcher(redis, codec, MAX_ITEMS_PER_CALL, telemetry
      ? { batch: (size) => telemetry.batch(size), commandTimeout: () => telemetry.commandTimeout() }
      : {})
    const timeout = options.commandTimeoutMs
    if (timeout !== undefined) {
      const serverClock = new ServerClock(redis)
      this.#serverClock = serverClock
      // Redis must run a decision within the first 80 % of the timeout: the rest is for its answer
      // to travel back and be read. A deadline at the full timeout let a decision be applied just
      // before it while the caller's timer (which runs before the socket's data in an event-loop
      // turn, and late on a loaded machine) had already answered without it: counted, not admitted.
      this.#deadline = () => serverClock.toServer(Date.now()) + timeout * DEADLINE_SHARE
    }
  }

  async start(): Promise<void> {
    await this.#serverClock?.sync().catch(() => {})
    this.#serverClock?.start()
    if (this.#bulkCommandTimeoutMs !== undefined && this.#bulk === this.redis) {
      const bulk = this.redis.duplicate({ commandTimeout: this.#bulkCommandTimeoutMs, connectionName: 'quota-flusher' })
      bulk.on('error', () => {}) // the decision client already logs connection trouble
      this.#bulk = bulk
      if (bulk.status === 'wait') await bulk.connect().catch(() => {}) // retries by itself
    }
  }

  async close(): Promise<void> {
    this.#serverClock?.stop()
    if (this.#bulk !== this.redis) {
      this.#bulk.disconnect()
      this.#bulk = this.redis
    }
  }

  async ping(): Promise<void> {
    await this.redis.ping()
  }

  async decide(request: DecisionRequest, options: RedisDecideOptions = {}): Promise<DecisionAnswer> {
    checkRequest(request)
    if (this.#recentDays.at(-1) !== request.day) this.#noteDay(request.day)
    let encoded = encodeDecision(request, this.keys, options.deadline ?? this.#deadline, this.#keysPerUser)
    for (let attempt = 1; ; attempt++) {
      const answer = await this.#batcher.submit(encoded.bucket, encoded)
      switch (answer.status) {
        case 'needs-key-lookup':
          // Only in the first 24 h after a loss, and once per call: restore a kept answer (the
          // retry replays it) or learn there is none (the retry decides and stores it).
          if (request.idempotency) await this.#restoreKey(request.userId, request.idempotency.key, request.now)
          encoded = encodeDecision(request, this.keys, options.deadline ?? this.#deadline, this.#keysPerUser, true)
          continue
        case 'needs-seed':
          if (attempt >= MAX_SEED_ATTEMPTS) throw new CounterUnavailableError('redis state could not be rebuilt from postgres')
          await this.#seed(request.userId, request.day, request.now)
          continue
        case 'deadline-passed':
          this.#telemetry?.commandTimeout()
          throw new CounterUnavailableError('decision deadline passed before redis ran it')
        default:
          return {
            outcome: answer.status,
            replayed: answer.replayed,
            deniedIndex: answer.deniedIndex,
            ...(answer.status === 'too-many-keys' ? { retryAfterMs: answer.retryAfterMs } : {}),
            context: answer.context,
            current: answer.current,
            limits: answer.limits,
          }
      }
    }
  }

  #noteDay(day: string): void {
    const days = this.#recentDays
    const at = days.indexOf(day)
    if (at >= 0) days.splice(at, 1)
    days.push(day)
    if (days.length > RECENT_DAYS) days.shift()
  }

  /**
   * Puts back the marks of shard-days that hold dirty users but lost their mark, for `days`
   * (default: the latest days decided on); see repair-marks.lua. Returns how many came back.
   */
  async repairMarks(days: readonly string[] = this.#recentDays, now = Date.now()): Promise<number> {
    this.#lastRepair = Date.now()
    if (days.length === 0) return 0
    const buckets = Array.from({ length: BUCKETS }, (_, b) => b)
    const restored = await mapLimited(buckets, FLUSH_SCRIPTS_IN_FLIGHT, async (bucket) => {
      const keys = [this.keys.marks(bucket)]
      const args: (string | number)[] = [now]
      for (const day of days) {
        for (let shard = 0; shard < SHARDS; shard++) {
          keys.push(this.keys.shardDay(bucket, shard, day))
          args.push(markMember(day, shard))
        }
      }
      return Number(await SCRIPTS.repairMarks.run(this.#bulk, keys, args))
    })
    return restored.reduce((a, b) => a + b, 0)
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
      : { counts: { deployments: 0, api_calls: 0, compute_hours: 0, storage: 0 }, version: 0, gauge: 0 }
    // Whatever the history holds, the rebuilt state is one a counter can hold (a loader reading
    // Postgres already clamps; this keeps any other loader from seeding a value past the ceiling).
    const { counts } = state
    const slot = slotOf(userId)
    const { bucket } = slot
    const period = gaugePeriod(day)
    await SCRIPTS.seed.run(this.redis, [
      this.keys.userDay(userId, day, slot), this.keys.marks(bucket), this.keys.epoch(bucket),
      legacyV1.day(this.keys, bucket, userId, day), legacyV1.gauge(this.keys, bucket, userId), legacyV1.dirty(this.keys, bucket),
      this.keys.gauges(bucket, slot.shard, period), this.keys.gauges(bucket, slot.shard, period - 1),
      this.keys.userDay(userId, previousDay(day), slot),
    ], [
      userId, seedable(counts.deployments), seedable(counts.api_calls), seedable(counts.compute_hours), seedable(state.gauge),
      state.version, dayKeyTtlSeconds(day, now), now, markMember(day, slot.shard), legacyV1.member(userId, day),
      gaugeTtlSeconds(period, now),
    ])
  }

  async #restoreKey(userId: string, key: string, now: number): Promise<void> {
    const kept = await this.#keyLoader?.(userId, key)
    if (!kept || kept.expiresAt <= now) return
    const { bucket } = slotOf(userId)
    await SCRIPTS.restoreKey.run(this.redis, [this.keys.idempotency(userId, key, bucket), this.keys.idempotencyIndex(userId, bucket)], [
      kept.answer, kept.expiresAt - now, key,
    ])
  }

  async readPendingKeys(maxPerBucket: number): Promise<PendingKey[]> {
    const perBucket = await this.#perBucket((p, bucket) => p.zrange(this.keys.keyOutbox(bucket), '0', String(maxPerBucket - 1)))
    const members: Omit<PendingKey, 'kept'>[] = []
    perBucket.forEach((raw, bucket) => {
      for (const member of raw as string[]) members.push({ bucket, ...parseOutboxMember(member) })
    })
    if (members.length === 0) return []
    let replies: [Error | null, unknown][]
    try {
      const reads = this.#bulk.pipeline()
      for (const m of members) {
        const name = this.keys.idempotency(m.userId, m.key, m.bucket)
        reads.get(name)
        reads.pttl(name)
      }
      replies = (await reads.exec()) ?? []
    } catch (err) {
      throw classify(err)
    }
    const readAt = Date.now()
    return members.map((m, i) => {
      const [getErr, answer] = replies[2 * i] ?? [new Error('no reply'), null]
      const [ttlErr, ttl] = replies[2 * i + 1] ?? [new Error('no reply'), null]
      if (getErr || ttlErr) throw classify(getErr ?? ttlErr)
      const alive = typeof answer === 'string' && Number(ttl) > 0
      return { ...m, kept: alive ? { answer, expiresAt: readAt + Number(ttl) } : null }
    })
  }

  async acknowledgeKeys(bucket: number, keys: readonly { userId: string; key: string }[]): Promise<number> {
    if (keys.length === 0) return 0
    try {
      return await this.#bulk.zrem(this.keys.keyOutbox(bucket), ...keys.map((k) => outboxMember(k.userId, k.key)))
    } catch (err) {
      throw classify(err)
    }
  }

  async reset(userId: string, day: string, now: number, metrics: readonly MetricName[]): Promise<void> {
    const slot = slotOf(userId)
    const { bucket, shard } = slot
    const period = gaugePeriod(day)
    const keys = [
      this.keys.userDay(userId, day, slot), this.keys.userDay(userId, previousDay(day), slot),
      this.keys.gauges(bucket, shard, period), this.keys.gauges(bucket, shard, period - 1), this.keys.marks(bucket), this.keys.epoch(bucket),
    ]
    const args = [
      userId, now, dayKeyTtlSeconds(day, now), markMember(day, shard), startOfUtcDay(day), gaugeTtlSeconds(period, now),
      ...metrics.map((m) => POSITION[m]),
    ]
    for (let attempt = 1; ; attempt++) {
      const status = await SCRIPTS.reset.run(this.redis, keys, args)
      if (status === 1) return
      if (attempt >= MAX_SEED_ATTEMPTS) throw new CounterUnavailableError('redis state could not be rebuilt')
      await this.#seed(userId, day, now)
    }
  }

  /**
   * Up to about `maxPerBucket` dirty user-days of every bucket, oldest shard-day first, with
   * their current values: one pipeline of ZRANGE (the marks, and the dirty sets of layout
   * version 1 while an upgrade drains them), then one read.lua call per bucket (its keys share
   * the slot). Whole shard-days are read, so a bucket may give a few more than `maxPerBucket`.
   */
  async readDirty(maxPerBucket: number): Promise<DirtyUserDay[]> {
    if (Date.now() - this.#lastRepair >= MARK_REPAIR_INTERVAL_MS) await this.repairMarks()
    const replies = await this.#perBucket((p, bucket) => {
      p.zrange(this.keys.marks(bucket), '0', String(maxPerBucket - 1), 'WITHSCORES')
      p.zrange(legacyV1.dirty(this.keys, bucket), '0', String(maxPerBucket - 1), 'WITHSCORES')
    })
    const work: { bucket: number; marks: string[]; legacy: string[] }[] = []
    for (let bucket = 0; bucket < BUCKETS; bucket++) {
      const marks = replies[2 * bucket] as string[]
      const legacy = replies[2 * bucket + 1] as string[]
      if (marks.length > 0 || legacy.length > 0) work.push({ bucket, marks, legacy })
    }
    const out: DirtyUserDay[] = []
    await mapLimited(work, FLUSH_SCRIPTS_IN_FLIGHT, async ({ bucket, marks, legacy }) => {
      if (marks.length > 0) out.push(...await this.#readMarked(bucket, marks, maxPerBucket))
      if (legacy.length > 0) out.push(...await this.#readLegacy(bucket, legacy))
    })
    return out
  }

  /** The dirty user-days of a bucket's marked shard-days (`marks`: member, score, ...). */
  async #readMarked(bucket: number, marks: readonly string[], limit: number): Promise<DirtyUserDay[]> {
    const shardDays: { day: string; since: number }[] = []
    const keys = [this.keys.marks(bucket)]
    const args: (string | number)[] = [limit]
    for (let i = 0; i < marks.length; i += 2) {
      const member = marks[i] as string
      const { day, shard } = parseMarkMember(member)
      shardDays.push({ day, since: Number(marks[i + 1]) })
      keys.push(this.keys.shardDay(bucket, shard, day))
      args.push(member)
    }
    const perHash = String(await SCRIPTS.read.run(this.#bulk, keys, args)).split('|')
    const out: DirtyUserDay[] = []
    shardDays.forEach(({ day, since }, i) => {
      const rows = perHash[i]
      if (!rows || rows === '~') return
      for (const row of rows.split(';')) {
        const comma = row.indexOf(',')
        out.push({ bucket, userId: row.slice(0, comma), day, since, state: parseCounts(row.slice(comma + 1)) })
      }
    })
    return out
  }

  /** User-days still in layout version 1's dirty set (`members`: member, score, ...). */
  async #readLegacy(bucket: number, members: readonly string[]): Promise<DirtyUserDay[]> {
    const list: Omit<DirtyUserDay, 'state'>[] = []
    for (let i = 0; i < members.length; i += 2) {
      list.push({ bucket, ...legacyV1.parseMember(members[i] as string), since: Number(members[i + 1]) })
    }
    const keys = list.map((m) => legacyV1.day(this.keys, bucket, m.userId, m.day))
    const rows = String(await SCRIPTS.legacyRead.run(this.#bulk, keys, [])).split(';')
    return list.map((m, i) => {
      this.#legacyRead.add(legacyV1.member(m.userId, m.day))
      const row = rows[i] ?? '-'
      return { ...m, state: row === '-' ? null : parseCounts(row) }
    })
  }

  async acknowledge(bucket: number, written: readonly WrittenUserDay[], readAt = 0): Promise<number> {
    if (written.length === 0) return 0
    const byHash = new Map<string, { member: string; pairs: (string | number)[] }>()
    const legacy: WrittenUserDay[] = []
    for (const w of written) {
      if (this.#legacyRead.delete(legacyV1.member(w.userId, w.day))) {
        legacy.push(w)
        continue
      }
      const { shard } = slotOf(w.userId)
      const hash = this.keys.shardDay(bucket, shard, w.day)
      let entry = byHash.get(hash)
      if (!entry) {
        entry = { member: markMember(w.day, shard), pairs: [] }
        byHash.set(hash, entry)
      }
      entry.pairs.push(w.userId, w.version)
    }
    let cleaned = 0
    if (byHash.size > 0) {
      const args: (string | number)[] = [readAt]
      for (const { member, pairs } of byHash.values()) args.push(member, pairs.length / 2, ...pairs)
      cleaned += Number(await SCRIPTS.ack.run(this.#bulk, [this.keys.marks(bucket), ...byHash.keys()], args))
    }
    if (legacy.length > 0) {
      const keys = [legacyV1.dirty(this.keys, bucket), ...legacy.map((w) => legacyV1.day(this.keys, bucket, w.userId, w.day))]
      const args = [readAt, ...legacy.flatMap((w) => [legacyV1.member(w.userId, w.day), w.version])]
      cleaned += Number(await SCRIPTS.legacyAck.run(this.#bulk, keys, args))
    }
    return cleaned
  }

  async oldestDirty(): Promise<number | null> {
    let oldest: number | null = null
    const replies = await this.#perBucket((p, bucket) => {
      p.zrange(this.keys.marks(bucket), '0', '0', 'WITHSCORES')
      p.zrange(legacyV1.dirty(this.keys, bucket), '0', '0', 'WITHSCORES')
    })
    for (const flat of replies) {
      const pair = flat as string[]
      if (pair.length >= 2) {
        const since = Number(pair[1])
        if (oldest === null || since < oldest) oldest = since
      }
    }
    return oldest
  }

  /**
   * Dirty user-days per bucket: the "#" of each marked shard-day (two pipelines), plus what
   * layout version 1 still holds.
   */
  async dirtyCounts(): Promise<number[]> {
    const replies = await this.#perBucket((p, bucket) => {
      p.zrange(this.keys.marks(bucket), '0', '-1')
      p.zcard(legacyV1.dirty(this.keys, bucket))
    })
    const counts = Array.from({ length: BUCKETS }, (_, bucket) => Number(replies[2 * bucket + 1]))
    const hashes: { bucket: number; key: string }[] = []
    for (let bucket = 0; bucket < BUCKETS; bucket++) {
      for (const member of replies[2 * bucket] as string[]) {
        const { day, shard } = parseMarkMember(member)
        hashes.push({ bucket, key: this.keys.shardDay(bucket, shard, day) })
      }
    }
    if (hashes.length === 0) return counts
    let dirty: [Error | null, unknown][]
    try {
      const reads = this.#bulk.pipeline()
      for (const h of hashes) reads.hget(h.key, '#')
      dirty = (await reads.exec()) ?? []
    } catch (err) {
      throw classify(err)
    }
    hashes.forEach((h, i) => {
      const [err, n] = dirty[i] ?? [new Error('no reply'), null]
      if (err) throw classify(err)
      counts[h.bucket] = (counts[h.bucket] ?? 0) + Number(n ?? 0)
    })
    return counts
  }

  /** Commands per bucket, in one pipeline; the replies in order. */
  async #perBucket(command: (pipeline: ChainableCommander, bucket: number) => void): Promise<unknown[]> {
    try {
      const pipeline = this.#bulk.pipeline()
      for (let b = 0; b < BUCKETS; b++) command(pipeline, b)
      const replies = (await pipeline.exec()) ?? []
      return replies.map(([err, reply]) => {
        if (err) throw err
        return reply
      })
    } catch (err) {
      throw classify(err)
    }
  }
}

/** Counts "d,a,c,s,v" — registry order, then the version — as read.lua and legacy-v1-read.lua return them. */
function parseCounts(row: string): NonNullable<DirtyUserDay['state']> {
  const values = row.split(',').map(Number)
  const counts = {} as MetricCounts
  METRIC_NAMES.forEach((m, i) => {
    counts[m] = values[i] ?? 0
  })
  return { counts, version: values[4] ?? 0 }
}

/**
 * The CounterStore on Redis, one server or a Redis Cluster (every key of a call shares one hash
 * tag; client.ts tells the two apart where it must). With flush-ledger.ts, the only code that knows the Lua scripts
 * and the key layout (keys.ts). Decisions go through a ScriptBatcher (one decide.lua call per
 * bucket per event-loop turn); seeds and resets are one script call each; the flusher's reads and
 * acknowledgements are the FlushLedger's, on the flusher's own connection.
 *
 * Decision deadlines: a call that timed out here may still sit in Redis' socket buffer (Redis
 * paused, not dead) and run later, after the caller answered without it. With
 * `commandTimeoutMs`, every decision carries a deadline in Redis-server time (ServerClock) past
 * which decide.lua applies nothing.
 */
import { previousDay, startOfUtcDay } from '../../clock.ts'
import { MAX_TOTAL_MICRO } from '../../metrics.ts'
import type { MetricName } from '../../metrics.ts'
import { CounterUnavailableError } from '../errors.ts'
import { checkHoldRequest } from '../hold-request.ts'
import type {
  CounterStore, DecisionAnswer, DecisionRequest, DirtyUserDay, KeyLoader, PendingKey, SeedLoader, SeedState,
  ThresholdCrossing, WrittenUserDay,
} from '../store.ts'
import { MAX_ITEMS_PER_CALL, ScriptBatcher } from './batcher.ts'
import type { BatchCodec } from './batcher.ts'
import { ServerClock, isCluster } from './client.ts'
import type { RedisClient } from './client.ts'
import { dayKeyTtlSeconds, decodeReply, encodeCall, encodeDecision } from './decide-protocol.ts'
import type { EncodedDecision, ScriptAnswer } from './decide-protocol.ts'
import { KeySpace, POSITION, gaugePeriod, gaugeTtlSeconds, markMember } from './keys.ts'
import { legacyV1 } from './legacy-v1.ts'
import { FlushLedger } from './flush-ledger.ts'
import { SCRIPTS } from './scripts.ts'

/** Share of the command timeout within which Redis must have run a decision (see the constructor). */
export const DEADLINE_SHARE = 0.8

/** Seeding attempts of one decision before the store gives up (another replica keeps resetting). */
const MAX_SEED_ATTEMPTS = 3

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
  checkHoldRequest(req)
}

export interface RedisCounterStoreOptions {
  /** Prefix of every key. @default 'quota:' */
  prefix?: string
  /** Buckets (hash tags, so cluster slots) users are spread over: REDIS_BUCKETS. @default 64 */
  buckets?: number
  /**
   * Replicas a decision's writes must reach before it is answered (REDIS_WAIT_REPLICAS; WAIT after
   * each batch, see ReplicaWait): with 1, a failover to a replica loses no admitted decision.
   * @default 0
   */
  waitReplicas?: number
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
  readonly #ledger: FlushLedger
  /** The flusher's connection: the decision one until start() opens its own. */
  #bulk: RedisClient

  constructor(
    readonly redis: RedisClient,
    options: RedisCounterStoreOptions = {},
  ) {
    this.keys = new KeySpace(options.prefix ?? 'quota:', options.buckets)
    this.#loader = options.loader
    this.#keyLoader = options.keyLoader
    this.#bulk = redis
    this.#ledger = new FlushLedger(this.keys, () => this.#bulk)
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
    const replicas = options.waitReplicas ?? 0
    // WAIT gets the part of the timeout the script's deadline leaves (see DEADLINE_SHARE).
    const replicaWait = replicas > 0
      ? { replicas, timeoutMs: Math.max(1, Math.round((options.commandTimeoutMs ?? 250) * (1 - DEADLINE_SHARE))) }
      : undefined
    this.#batcher = new ScriptBatcher(redis, codec, MAX_ITEMS_PER_CALL, telemetry
      ? { batch: (size) => telemetry.batch(size), commandTimeout: () => telemetry.commandTimeout() }
      : {}, replicaWait)
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
      const options = { commandTimeout: this.#bulkCommandTimeoutMs, connectionName: 'quota-flusher' }
      const redis = this.redis
      const bulk: RedisClient = isCluster(redis)
        ? redis.duplicate(undefined, { redisOptions: { ...redis.options.redisOptions, ...options } })
        : redis.duplicate(options)
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
    this.#ledger.noteDay(request.day)
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
            ...(answer.reserved !== undefined ? { reserved: answer.reserved } : {}),
            ...(answer.held !== undefined ? { held: answer.held } : {}),
            ...(answer.committed !== undefined ? { committed: answer.committed } : {}),
          }
      }
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
      : { counts: { deployments: 0, api_calls: 0, compute_hours: 0, storage: 0 }, version: 0, gauge: 0 }
    // Whatever the history holds, the rebuilt state is one a counter can hold (a loader reading
    // Postgres already clamps; this keeps any other loader from seeding a value past the ceiling).
    const { counts } = state
    const slot = this.keys.slotOf(userId)
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
    const { bucket } = this.keys.slotOf(userId)
    await SCRIPTS.restoreKey.run(this.redis, [this.keys.idempotency(userId, key, bucket), this.keys.idempotencyIndex(userId, bucket)], [
      kept.answer, kept.expiresAt - now, key,
    ])
  }

  async reset(userId: string, day: string, now: number, metrics: readonly MetricName[]): Promise<void> {
    const slot = this.keys.slotOf(userId)
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

  // The flusher's side (flush-ledger.ts).
  repairMarks(days?: readonly string[], now?: number): Promise<number> {
    return this.#ledger.repairMarks(days, now)
  }

  readDirty(maxPerBucket: number): Promise<DirtyUserDay[]> {
    return this.#ledger.readDirty(maxPerBucket)
  }

  acknowledge(bucket: number, written: readonly WrittenUserDay[], readAt = 0): Promise<number> {
    return this.#ledger.acknowledge(bucket, written, readAt)
  }

  readPendingKeys(maxPerBucket: number): Promise<PendingKey[]> {
    return this.#ledger.readPendingKeys(maxPerBucket)
  }

  acknowledgeKeys(bucket: number, keys: readonly { userId: string; key: string }[]): Promise<number> {
    return this.#ledger.acknowledgeKeys(bucket, keys)
  }

  readCrossings(maxPerBucket: number): Promise<ThresholdCrossing[]> {
    return this.#ledger.readCrossings(maxPerBucket)
  }

  acknowledgeCrossings(bucket: number, refs: readonly string[]): Promise<number> {
    return this.#ledger.acknowledgeCrossings(bucket, refs)
  }

  oldestDirty(): Promise<number | null> {
    return this.#ledger.oldestDirty()
  }

  dirtyCounts(): Promise<number[]> {
    return this.#ledger.dirtyCounts()
  }
}

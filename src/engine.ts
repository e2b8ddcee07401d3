/**
 * createQuotaEngine: the one wiring of quota's parts — counter store, limits cache (LISTEN),
 * usage and admin services, flusher (with the threshold-event outbox), leader lock, midnight
 * scheduler, webhook delivery — built, started and
 * stopped in one place. The Fastify plugin, buildApp, the tests' helpers and the benchmarks all
 * use it; a caller passes options, never re-wires the graph. docs/architecture.md draws it.
 */
import type { RedisClient } from './counters/redis/client.ts'
import type { Logger } from 'pino'
import { systemClock } from './clock.ts'
import type { Clock } from './clock.ts'
import type { FailMode } from './config.ts'
import { MemoryCounterStore } from './counters/memory/memory-store.ts'
import { RedisCounterStore } from './counters/redis/redis-store.ts'
import type { CounterStore } from './counters/store.ts'
import { warnAboutRedisDurability } from './counters/redis/settings-check.ts'
import { createPool } from './db/client.ts'
import type { Pool } from './db/client.ts'
import { loadRecordedUserDay } from './db/daily-usage.ts'
import { readIdempotencyRecord } from './db/idempotency-records.ts'
import { LimitsCache } from './limits/limits-cache.ts'
import { EventOutbox } from './persistence/event-outbox.ts'
import { Flusher } from './persistence/flusher.ts'
import { LeaderLock } from './persistence/leader.ts'
import { PartitionKeeper } from './persistence/partition-keeper.ts'
import { Scheduler } from './persistence/scheduler.ts'
import { WebhookDelivery } from './persistence/webhooks.ts'
import type { WebhookOptions } from './persistence/webhooks.ts'
import { AdminService } from './usage/admin.ts'
import { UsageService } from './usage/service.ts'
import { noTelemetry } from './telemetry.ts'
import type { Telemetry } from './telemetry.ts'

export type { DecisionOutcome, Telemetry } from './telemetry.ts'
export { noTelemetry } from './telemetry.ts'

export type EngineLogger = Pick<Logger, 'info' | 'warn' | 'error' | 'debug'>

export interface QuotaEngineOptions {
  /**
   * Where the counters live. `redis` (the default) and `cluster`: in Redis (one, or a Redis
   * Cluster), through `redis`. `embedded`: in this
   * process (MemoryCounterStore), which must then be the only one on its database — embedded
   * mode's data-folder lock makes it so — so it runs the midnight job without a leader election.
   */
  mode?: 'redis' | 'cluster' | 'embedded'
  /**
   * ioredis client for decisions (createRedisClient, or createClusterClient in mode `cluster`:
   * bounded timeouts, no offline queue). Not closed by the engine. Required in modes `redis` and
   * `cluster`, unused in mode `embedded`.
   */
  redis?: RedisClient
  /**
   * A pg Pool (not ended by the engine), or a connection string (a pool is created and ended with
   * it). Embedded mode passes the pool over its PGlite (db/pglite-pool.ts).
   */
  database: Pool | string
  /**
   * Connection string for the LISTEN and leader-lock connections. @default the pool's
   * connectionString. Not needed with an embedded pool: it listens in-process.
   */
  databaseUrl?: string
  /** Buckets (hash tags, so cluster slots) users are spread over: REDIS_BUCKETS. @default 64 */
  buckets?: number
  /** Replicas a decision must reach before it is answered: REDIS_WAIT_REPLICAS. @default 0 */
  waitReplicas?: number
  /** Prefix of every Redis key. @default 'quota:' */
  prefix?: string
  /** Tier of users first seen. @default 'free' */
  defaultTier?: string
  /** When Redis cannot be reached: `closed` = 503, `open` = allow and log. @default 'closed' */
  failMode?: FailMode
  /** Longest a decision waits for Redis, ms; must match the client's commandTimeout. @default 250 */
  commandTimeoutMs?: number
  /** Redis -> Postgres flush period, ms. @default 1000 */
  flushIntervalMs?: number
  /** Source of "now" for usage days. @default the system clock */
  clock?: Clock
  /** Run the flusher's timer in this process (the flusher exists either way). @default true */
  flush?: boolean
  /** Take part in the leader election that runs the midnight job. @default true */
  scheduler?: boolean
  /**
   * HISTORY_RETENTION_MONTHS: the leader drops daily_usage partitions older than this many months
   * (persistence/partition-keeper.ts). @default undefined (history is kept)
   */
  historyRetentionMonths?: number
  /** Check Redis' eviction and persistence settings at start and warn. @default true */
  checkRedisSettings?: boolean
  /** Answer repeated denials from memory for this long, ms (0 = off). @default 1000 */
  denyCacheMs?: number
  /** Most idempotency keys one user holds at once (IDEMPOTENCY_KEYS_PER_USER). @default 10000 */
  idempotencyKeysPerUser?: number
  logger?: EngineLogger
  /**
   * WEBHOOK_URL and WEBHOOK_SECRET (and, for tests, the worker's timings): threshold events are
   * POSTed there by a worker in this process (docs/events.md). Without it events are still recorded.
   */
  webhook?: Omit<WebhookOptions, 'pool' | 'clock' | 'logger' | 'telemetry'>
  /**
   * Where decisions, batches, timeouts and flushed rows are counted (http/metrics.ts has the
   * Prometheus one). @default noTelemetry
   */
  telemetry?: Telemetry
}

export interface QuotaEngine<S extends CounterStore = CounterStore> {
  /** The hot path: checkLimit, consume, incrementUsage, refund, status. */
  readonly usage: UsageService
  /** Resets, any user's status, tier and limit changes. */
  readonly admin: AdminService
  /** RedisCounterStore in mode redis, MemoryCounterStore in mode embedded. */
  readonly store: S
  readonly limits: LimitsCache
  readonly flusher: Flusher
  /** Copies threshold crossings from the store to usage_events (each flush pass runs it). */
  readonly events: EventOutbox
  /** The webhook worker; undefined without `webhook`. */
  readonly webhooks: WebhookDelivery | undefined
  /** Undefined when `scheduler: false`, and in mode embedded (the one process is the leader). */
  readonly leader: LeaderLock | undefined
  readonly scheduler: Scheduler | undefined
  /** daily_usage's monthly partitions, made ahead (and dropped past retention) by the leader; with the scheduler. */
  readonly partitions: PartitionKeeper | undefined
  readonly clock: Clock
  readonly pool: Pool
  /** Stops the jobs, makes the final flush (bounded), closes what the engine opened. Idempotent. */
  close(): Promise<void>
}

/** Longest the final flush may take at shutdown (SIGTERM must end within 10 s). */
const FINAL_FLUSH_BUDGET_MS = 6000
/** Command timeout of the flusher's own Redis connection: its reads are large. */
const FLUSH_COMMAND_TIMEOUT_MS = 10_000

function connectionString(database: Pool | string, databaseUrl: string | undefined): string | undefined {
  if (databaseUrl !== undefined) return databaseUrl
  if (typeof database === 'string') return database
  return (database as Pool & { options: { connectionString?: string } }).options.connectionString
}

/**
 * Builds and starts the engine; if any part fails to start, what started is stopped again. The
 * store is the mode's: a RedisCounterStore on `redis`, or (mode embedded) a MemoryCounterStore,
 * empty at start, that loads each user-day from daily_usage the first time it is touched — the
 * same seed path the Redis store takes after a loss — so a restart keeps today's counts.
 */
export async function createQuotaEngine(options: QuotaEngineOptions & { mode?: 'redis' | 'cluster' }): Promise<QuotaEngine<RedisCounterStore>>
export async function createQuotaEngine(options: QuotaEngineOptions & { mode: 'embedded' }): Promise<QuotaEngine<MemoryCounterStore>>
export async function createQuotaEngine(options: QuotaEngineOptions): Promise<QuotaEngine>
export async function createQuotaEngine(options: QuotaEngineOptions): Promise<QuotaEngine> {
  const clock = options.clock ?? systemClock
  const logger = options.logger
  const telemetry = options.telemetry ?? noTelemetry
  const embedded = options.mode === 'embedded'
  const databaseUrl = connectionString(options.database, options.databaseUrl)
  // An embedded pool listens in-process; a Postgres pool needs a URL for its LISTEN and lock sessions.
  if (!embedded && databaseUrl === undefined) throw new Error('quota: pass databaseUrl (the pool has no connectionString)')
  const ownsPool = typeof options.database === 'string'
  const pool = typeof options.database === 'string' ? createPool(options.database, { logger }) : options.database

  const loader = (userId: string, day: string) => loadRecordedUserDay(pool, userId, day,
    (detail) => logger?.warn(detail, 'daily_usage holds a value no counter can: rebuilt with the nearest one'))
  const keyLoader = (userId: string, key: string) => readIdempotencyRecord(pool, userId, key)
  const redis = options.redis
  if (!embedded && redis === undefined) throw new Error('quota: mode redis needs the `redis` client')
  const store: CounterStore = embedded || redis === undefined
    // The service clock is the store's clock: lifetimes and requests' `now` agree (memory-store.ts).
    ? new MemoryCounterStore({ loader, keyLoader, idempotencyKeysPerUser: options.idempotencyKeysPerUser, clock })
    : new RedisCounterStore(redis, {
        prefix: options.prefix ?? 'quota:',
        ...(options.buckets !== undefined && { buckets: options.buckets }),
        ...(options.waitReplicas !== undefined && { waitReplicas: options.waitReplicas }),
        loader,
        keyLoader,
        commandTimeoutMs: options.commandTimeoutMs ?? 250,
        bulkCommandTimeoutMs: FLUSH_COMMAND_TIMEOUT_MS,
        idempotencyKeysPerUser: options.idempotencyKeysPerUser,
        telemetry,
      })
  const limits = new LimitsCache({ pool, databaseUrl, defaultTier: options.defaultTier ?? 'free', logger })
  const events = new EventOutbox({ store, pool, logger, telemetry })
  const flusher = new Flusher({ store, pool, clock, intervalMs: options.flushIntervalMs ?? 1000, logger, telemetry, events })
  const webhooks = options.webhook && new WebhookDelivery({ ...options.webhook, pool, clock, logger, telemetry })
  const leader = options.scheduler === false || embedded || databaseUrl === undefined
    ? undefined
    : new LeaderLock({ databaseUrl, logger })
  const scheduler = options.scheduler === false
    ? undefined
    : new Scheduler({ pool, flusher, clock, isLeader: () => (leader ? leader.isLeader : true), logger })
  const partitions = scheduler && new PartitionKeeper({
    pool, clock, isLeader: () => (leader ? leader.isLeader : true), retentionMonths: options.historyRetentionMonths, logger,
  })
  const usage = new UsageService({
    store, limits, clock, logger, failMode: options.failMode ?? 'closed', denyCacheMs: options.denyCacheMs,
    telemetry,
  })
  const admin = new AdminService({
    pool, store, limits, usage, clock, flushAll: () => flusher.flushAll(), flushEvents: () => events.copyAll(), logger,
  })
  const flushing = options.flush !== false

  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    closing ??= (async () => {
      await scheduler?.stop()
      await partitions?.stop()
      await leader?.stop()
      // The last flush: everything admitted reaches daily_usage before the process exits. Bounded,
      // so a hung Postgres cannot keep the process past its shutdown budget: whatever is not
      // written stays marked dirty and the next flush (any replica, or this one restarted) writes it.
      // An attempt under way gets a short grace, beside the final flush (which copies the last crossings).
      await Promise.all([webhooks?.stop(), flushing ? finalFlush(flusher, logger) : undefined])
      await store.close()
      await limits.stop()
      if (ownsPool) await pool.end()
    })()
    return closing
  }

  try {
    await limits.start()
    await store.start()
    if (redis && !embedded && options.checkRedisSettings !== false) await warnAboutRedisDurability(redis, logger)
    if (flushing) flusher.start()
    webhooks?.start()
    await leader?.start()
    scheduler?.start()
    partitions?.start()
  } catch (err) {
    await close().catch(() => {})
    throw err
  }
  return { usage, admin, store, limits, flusher, events, webhooks, leader, scheduler, partitions, clock, pool, close }
}

async function finalFlush(flusher: Flusher, logger: EngineLogger | undefined): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const budget = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not done within ${FINAL_FLUSH_BUDGET_MS} ms`)), FINAL_FLUSH_BUDGET_MS)
  })
  await Promise.race([flusher.stop(), budget])
    .catch((err: Error) => logger?.error({ err: err.message }, 'final usage flush failed; changes stay in redis for the next flush'))
    .finally(() => clearTimeout(timer))
}

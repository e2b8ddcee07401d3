/**
 * A usage service wired like the plugin wires it — real Redis (own key prefix, or a throwaway
 * server), real Postgres (own database) — with a ManualClock, for engine-level tests.
 */
import { randomUUID } from 'node:crypto'
import type { Redis } from 'ioredis'
import { ManualClock } from '../../src/clock.ts'
import type { FailMode } from '../../src/config.ts'
import { ServerClock, connectRedis, createRedisClient } from '../../src/counters/redis-client.ts'
import { RedisCounterStore } from '../../src/counters/redis-store.ts'
import { createPool } from '../../src/db/client.ts'
import type { Pool } from '../../src/db/client.ts'
import { loadSeedState } from '../../src/db/daily-usage.ts'
import { LimitsCache } from '../../src/limits/limits-cache.ts'
import { Flusher } from '../../src/persistence/flusher.ts'
import { UsageService } from '../../src/usage/service.ts'
import { createTestDatabase } from './database.ts'
import type { Teardownable, TestDatabase } from './database.ts'
import { TEST_REDIS_URL, closeRedis, deleteKeysWithPrefix, testRedisPrefix } from './redis.ts'

export interface UsageHarness {
  service: UsageService
  store: RedisCounterStore
  limits: LimitsCache
  flusher: Flusher
  /** The service's pool (UTC sessions). */
  pool: Pool
  db: TestDatabase
  /** The decision client (production options: bounded timeout, no offline queue). */
  redis: Redis
  prefix: string
  clock: ManualClock
}

export interface HarnessOptions {
  redisUrl?: string
  failMode?: FailMode
  commandTimeoutMs?: number
  /** Start of the manual clock. @default '2026-11-28T12:00:00.000Z' */
  now?: string
  /** Reuse a database (several harnesses on one Postgres, like replicas). */
  db?: TestDatabase
  prefix?: string
}

export async function createUsageHarness(t: Teardownable, options: HarnessOptions = {}): Promise<UsageHarness> {
  const db = options.db ?? (await createTestDatabase(t))
  const pool = createPool(db.url)
  const redisUrl = options.redisUrl ?? TEST_REDIS_URL
  const commandTimeoutMs = options.commandTimeoutMs ?? 250
  const redis = createRedisClient({ url: redisUrl, commandTimeoutMs })
  await connectRedis(redis, redisUrl)
  const prefix = options.prefix ?? testRedisPrefix()
  const clock = new ManualClock(options.now ?? '2026-11-28T12:00:00.000Z')
  const store = new RedisCounterStore(redis, { prefix, loader: (u, d) => loadSeedState(pool, u, d) })
  const limits = new LimitsCache({ pool, databaseUrl: db.url })
  await limits.start()
  const flusher = new Flusher({ store, pool, intervalMs: 50 })
  const serverClock = new ServerClock(redis)
  await serverClock.sync().catch(() => {})
  const service = new UsageService({
    store, limits, clock, pool, serverClock, commandTimeoutMs,
    failMode: options.failMode ?? 'closed',
    flushAll: () => flusher.flushAll(),
  })
  t.teardown(async () => {
    await limits.stop()
    await deleteKeysWithPrefix(redis, prefix).catch(() => {})
    await closeRedis(redis)
    await pool.end().catch(() => {})
  })
  return { service, store, limits, flusher, pool, db, redis, prefix, clock }
}

export function newUserId(): string {
  return randomUUID()
}

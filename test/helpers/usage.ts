/**
 * The engine (createQuotaEngine, the wiring production uses) on real Redis (own key prefix, or a
 * throwaway server) and real Postgres (own database), with a ManualClock and no timers: tests
 * drive the flusher and the midnight job themselves.
 */
import { randomUUID } from 'node:crypto'
import type { Redis } from 'ioredis'
import { ManualClock } from '../../src/clock.ts'
import type { FailMode } from '../../src/config.ts'
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import type { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { createPool } from '../../src/db/client.ts'
import type { Pool } from '../../src/db/client.ts'
import { createQuotaEngine } from '../../src/engine.ts'
import type { QuotaEngine } from '../../src/engine.ts'
import type { LimitsCache } from '../../src/limits/limits-cache.ts'
import type { Flusher } from '../../src/persistence/flusher.ts'
import type { AdminService } from '../../src/usage/admin.ts'
import type { UsageService } from '../../src/usage/service.ts'
import { createTestDatabase } from './database.ts'
import type { Teardownable, TestDatabase } from './database.ts'
import { TEST_REDIS_URL, closeRedis, deleteKeysWithPrefix, testRedisPrefix } from './redis.ts'

export interface UsageHarness {
  engine: QuotaEngine
  service: UsageService
  admin: AdminService
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
  const engine = await createQuotaEngine({
    redis, database: pool, databaseUrl: db.url, prefix, clock, commandTimeoutMs,
    failMode: options.failMode ?? 'closed',
    flush: false, scheduler: false, checkRedisSettings: false,
  })
  t.teardown(async () => {
    await engine.close()
    await deleteKeysWithPrefix(redis, prefix).catch(() => {})
    await closeRedis(redis)
    await pool.end().catch(() => {})
  })
  return {
    engine, service: engine.usage, admin: engine.admin, store: engine.store, limits: engine.limits, flusher: engine.flusher,
    pool, db, redis, prefix, clock,
  }
}

export function newUserId(): string {
  return randomUUID()
}

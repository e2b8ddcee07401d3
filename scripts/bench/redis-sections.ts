/**
 * Two benchmark sections on the counter store:
 * - memory: Redis bytes per active user-day (3 daily metrics + storage, dirty tracking included);
 * - midnight: decision latency while the leader closes the day (flushing every user-day to
 *   Postgres) right after 00:00Z, against the same stream just before midnight.
 */
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { createQuotaEngine } from '../../src/engine.ts'
import type { Redis } from 'ioredis'
import { ManualClock } from '../../src/clock.ts'
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import { createPool } from '../../src/db/client.ts'
import { Scheduler } from '../../src/persistence/scheduler.ts'
import { benchUserId, percentile } from './env.ts'
import type { BenchEnv } from './env.ts'

async function bounded<T>(items: T[], concurrency: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < items.length) await fn(items[next++] as T)
  }))
}

async function usedMemory(redis: Redis): Promise<number> {
  const info = await redis.info('memory')
  return Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0)
}

export async function runMemory(env: BenchEnv, users: number) {
  const redis = createRedisClient({ url: env.redis.url, commandTimeoutMs: 5000 })
  await connectRedis(redis, env.redis.url)
  const prefix = 'mem:'
  const store = new RedisCounterStore(redis, { prefix })
  const ids = Array.from({ length: users }, (_, i) => benchUserId(3, i))
  const now = Date.parse('2026-11-28T12:00:00Z')
  const before = await usedMemory(redis)
  await bounded(ids, 500, (userId) => store.decide({
    mode: 'increment', userId, day: '2026-11-28', now,
    metrics: [
      { metric: 'deployments', amount: 1_000_000, limit: null },
      { metric: 'api_calls', amount: 25_000_000, limit: null },
      { metric: 'compute_hours', amount: 1_500_000, limit: null },
      { metric: 'storage', amount: 2_250_000, limit: null },
    ],
  }))
  const after = await usedMemory(redis)
  const sample = ids[0] as string
  const shardDayKey = store.keys.userDay(sample, '2026-11-28')
  const shardDayBytes = Number(await redis.memory('USAGE', shardDayKey, 'SAMPLES', '0'))
  const shardDayUsers = (await redis.hlen(shardDayKey)) - 1
  const shardDayEncoding = String(await redis.object('ENCODING', shardDayKey))
  redis.disconnect()
  return { users, bytesPerUserDay: (after - before) / users, shardDayBytes, shardDayUsers, shardDayEncoding }
}

export async function runMidnight(env: BenchEnv, users: number, streamS: number) {
  const pool = createPool(env.db.url)
  const ids = Array.from({ length: users }, (_, i) => benchUserId(4, i))
  await pool.query(`INSERT INTO users (id, username, tier) SELECT u, u::text, 'bench' FROM unnest($1::uuid[]) u ON CONFLICT DO NOTHING`, [ids])
  const redis = createRedisClient({ url: env.redis.url, commandTimeoutMs: 5000 })
  await connectRedis(redis, env.redis.url)
  const prefix = 'midnight:'
  const clock = new ManualClock('2026-11-28T23:59:00.000Z')
  // As production wires it (the flusher on its own connection); the close is driven from here.
  const engine = await createQuotaEngine({
    redis, database: pool, databaseUrl: env.db.url, prefix, clock, commandTimeoutMs: 5000,
    flush: false, scheduler: false, checkRedisSettings: false,
  })
  const { usage, flusher } = engine
  const scheduler = new Scheduler({ pool, flusher, clock, isLeader: () => true })
  // Every user active on the closing day, so the snapshot has `users` rows to flush.
  await bounded(ids, 500, (u) => usage.consume(u, { api_calls: 1, deployments: 1 }))

  const stream = async (seconds: number): Promise<number[]> => {
    const latencies: number[] = []
    const end = performance.now() + seconds * 1000
    let i = 0
    await Promise.all(Array.from({ length: 50 }, async () => {
      while (performance.now() < end) {
        const u = ids[i++ % ids.length] as string
        const t0 = performance.now()
        await usage.consume(u, { api_calls: 1 })
        latencies.push(performance.now() - t0)
      }
    }))
    return latencies.sort((a, b) => a - b)
  }
  const before = await stream(streamS)
  clock.set('2026-11-29T00:00:00.100Z')
  const t0 = performance.now()
  const [close, during] = await Promise.all([scheduler.closeDay('2026-11-28'), stream(streamS)])
  const closeMs = performance.now() - t0
  await engine.close()
  redis.disconnect()
  await pool.end()
  return {
    users,
    p99BeforeMs: percentile(before, 99),
    p99DuringMs: percentile(during, 99),
    p50BeforeMs: percentile(before, 50),
    p50DuringMs: percentile(during, 50),
    ratio: percentile(during, 99) / percentile(before, 99),
    closeDayMs: closeMs,
    closedUsers: close.users,
  }
}


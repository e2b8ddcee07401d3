/**
 * Flusher benchmark: `users` dirty user-days in Redis (users present in `users`), then one
 * flushAll into daily_usage, timed.
 */
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { createPool } from '../../src/db/client.ts'
import { Flusher } from '../../src/persistence/flusher.ts'
import { benchUserId } from './env.ts'
import type { BenchEnv } from './env.ts'

export async function runFlusherBench(env: BenchEnv, users: number) {
  const pool = createPool(env.db.url)
  const ids = Array.from({ length: users }, (_, i) => benchUserId(5, i))
  await pool.query(`INSERT INTO users (id, username, tier) SELECT u, u::text, 'bench' FROM unnest($1::uuid[]) u ON CONFLICT DO NOTHING`, [ids])
  const redis = createRedisClient({ url: env.redis.url, commandTimeoutMs: 10_000 })
  await connectRedis(redis, env.redis.url)
  const store = new RedisCounterStore(redis, { prefix: 'flushbench:' })
  const now = Date.parse('2026-11-28T12:00:00Z')
  let next = 0
  await Promise.all(Array.from({ length: 500 }, async () => {
    while (next < ids.length) {
      const userId = ids[next++] as string
      await store.decide({ mode: 'increment', userId, day: '2026-11-28', now, metrics: [{ metric: 'api_calls', amount: 3_000_000, limit: null }, { metric: 'compute_hours', amount: 250_000, limit: null }] })
    }
  }))
  const flusher = new Flusher({ store, pool })
  const t0 = performance.now()
  const result = await flusher.flushAll()
  const seconds = (performance.now() - t0) / 1000
  const { rows } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM daily_usage WHERE user_id = ANY($1::uuid[])`, [ids])
  redis.disconnect()
  await pool.end()
  if ((rows[0]?.n ?? 0) !== users) throw new Error(`flusher bench: expected ${users} rows, found ${rows[0]?.n}`)
  return { users, batchSize: 5000, seconds, rowsPerS: result.written / seconds, written: result.written }
}

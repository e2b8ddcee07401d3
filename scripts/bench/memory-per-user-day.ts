/**
 * Redis memory per active user-day: creates N user-days (default 100k) on a throwaway
 * redis-server through RedisCounterStore.decide (a consume of the 3 daily metrics + storage, so each
 * user-day has its entry in a shard-day hash, and its shard-day a mark), and compares INFO memory
 * used_memory before and after. Also prints MEMORY USAGE of one shard-day hash and the marks.
 *
 *   node --import tsx scripts/bench/memory-per-user-day.ts [--users 100000] [--concurrency 500]
 */
import { randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { utcDay } from '../../src/clock.ts'
import { BUCKETS, SHARDS } from '../../src/counters/redis/keys.ts'
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { startRedisServer } from '../../test/helpers/redis-server.ts'

const { values } = parseArgs({
  options: {
    users: { type: 'string', default: '100000' },
    concurrency: { type: 'string', default: '500' },
  },
})
const count = Number(values.users)
const concurrency = Number(values.concurrency)

const teardowns: (() => unknown)[] = []
const server = await startRedisServer({ teardown: (fn) => void teardowns.push(fn) })
const redis = new Redis(server.url, { commandTimeout: 30_000 })
try {
  // No loader: a user-day lost from Redis would start at 0 (fine here: nothing is lost).
  const store = new RedisCounterStore(redis, { prefix: 'quota:' })
  const usedMemory = async (): Promise<number> => Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1])
  const now = Date.now()
  const day = utcDay(now)
  const consume = (userId: string) => store.decide({
    mode: 'consume', userId, day, now,
    metrics: [
      { metric: 'deployments', amount: 1_000_000, limit: 50_000_000 },
      { metric: 'api_calls', amount: 17_000_000, limit: 50_000_000_000 },
      { metric: 'compute_hours', amount: 1_250_000, limit: 100_000_000 },
      { metric: 'storage', amount: 2_500_000, limit: 100_000_000 },
    ],
  })

  // The 64 per-bucket epoch keys and the scripts are a fixed cost, not per user: create them first.
  const warm = Array.from({ length: 2000 }, () => randomUUID())
  await Promise.all(warm.map(consume))
  for (let b = 0; b < BUCKETS; b++) {
    for (let s = 0; s < SHARDS; s++) await redis.del(store.keys.shardDay(b, s, day))
    await redis.del(store.keys.marks(b))
  }

  const before = await usedMemory()
  const users = Array.from({ length: count }, () => randomUUID())
  const started = Date.now()
  for (let i = 0; i < users.length; i += concurrency) {
    await Promise.all(users.slice(i, i + concurrency).map(consume))
  }
  const seconds = (Date.now() - started) / 1000
  const after = await usedMemory()

  const sample = users[0] ?? ''
  const shardDay = store.keys.userDay(sample, day)
  const shardDayBytes = Number(await redis.memory('USAGE', shardDay, 'SAMPLES', '0'))
  let marksBytes = 0
  let marks = 0
  for (let b = 0; b < BUCKETS; b++) {
    marksBytes += Number(await redis.memory('USAGE', store.keys.marks(b), 'SAMPLES', '0'))
    marks += await redis.zcard(store.keys.marks(b))
  }
  const encoding = await redis.object('ENCODING', shardDay)

  console.log(JSON.stringify({
    user_days: count,
    created_in_seconds: Number(seconds.toFixed(1)),
    used_memory_before: before,
    used_memory_after: after,
    bytes_per_user_day: Math.round((after - before) / count),
    memory_usage: {
      shard_day_hash: shardDayBytes,
      shard_day_encoding: encoding,
      shard_day_users: (await redis.hlen(shardDay)) - 1,
      sample_entry: await redis.hget(shardDay, sample),
      marks_total: marksBytes,
      marks,
    },
    keys: await redis.dbsize(),
  }, null, 2))
} finally {
  redis.disconnect()
  for (const fn of teardowns.reverse()) await fn()
}

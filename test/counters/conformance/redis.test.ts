/**
 * The conformance suite against the Redis store: the shared Redis, a key prefix of its own per
 * test; losing state deletes every key under that prefix (what a Redis restart without
 * persistence does to them).
 */
import t from 'tap'
import { connectRedis, createRedisClient } from '../../../src/counters/redis/client.ts'
import { RedisCounterStore } from '../../../src/counters/redis/redis-store.ts'
import type { SeedState } from '../../../src/counters/store.ts'
import { TEST_REDIS_URL, closeRedis, deleteKeysWithPrefix, testRedisPrefix } from '../../helpers/redis.ts'
import { emptyCounts, runConformance } from './suite.ts'

runConformance(t, 'redis', async (t) => {
  const redis = createRedisClient({ url: TEST_REDIS_URL, commandTimeoutMs: 5000 })
  await connectRedis(redis, TEST_REDIS_URL)
  const prefix = testRedisPrefix()
  const history = new Map<string, SeedState>()
  const store = new RedisCounterStore(redis, {
    prefix,
    commandTimeoutMs: 5000,
    bulkCommandTimeoutMs: 10_000,
    loader: async (userId, day) => history.get(`${userId}:${day}`) ?? { counts: emptyCounts(), version: 0, gauge: 0 },
  })
  await store.start()
  t.teardown(async () => {
    await store.close()
    await deleteKeysWithPrefix(redis, prefix).catch(() => {})
    await closeRedis(redis)
  })
  return { store, history, loseState: async () => void (await deleteKeysWithPrefix(redis, prefix)) }
})

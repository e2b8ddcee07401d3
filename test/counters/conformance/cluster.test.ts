/**
 * The conformance suite (and the model test inside it) against the Redis store on a real Redis
 * Cluster: 3 masters + 3 replicas started for this file (test/helpers/redis-cluster.ts). Each
 * test has a key prefix of its own; losing state deletes its keys on every master.
 */
import t from 'tap'
import { connectRedis, createClusterClient } from '../../../src/counters/redis/client.ts'
import { RedisCounterStore } from '../../../src/counters/redis/redis-store.ts'
import type { SeedState } from '../../../src/counters/store.ts'
import { deleteKeysWithPrefix, testRedisPrefix } from '../../helpers/redis.ts'
import { startRedisCluster } from '../../helpers/redis-cluster.ts'
import { emptyCounts, runConformance } from './suite.ts'

const cluster = await startRedisCluster(t)

runConformance(t, 'cluster', async (t) => {
  const redis = createClusterClient({ nodes: cluster.seeds, commandTimeoutMs: 5000 })
  await connectRedis(redis, cluster.env)
  const prefix = testRedisPrefix()
  const history = new Map<string, SeedState>()
  const store = new RedisCounterStore(redis, {
    prefix,
    commandTimeoutMs: 5000,
    bulkCommandTimeoutMs: 10_000,
    loader: async (userId, day) => history.get(`${userId}:${day}`) ?? { counts: emptyCounts(), version: 0, gauge: 0 },
  })
  await store.start()
  const loseState = async (): Promise<void> => {
    await Promise.all(redis.nodes('master').map((node) => deleteKeysWithPrefix(node, prefix)))
  }
  t.teardown(async () => {
    await store.close()
    await loseState().catch(() => {})
    redis.disconnect()
  })
  return { store, history, loseState }
})

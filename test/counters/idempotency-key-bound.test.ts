/**
 * Issue 11, finding 3: idempotency keys are bounded per user. Each key is kept 24 h — also for a
 * denial or an increment that changed nothing, since its replay must answer the same — so the
 * store counts a user's live keys (an index in the user's bucket, each key with its expiry) and
 * refuses a call that would store one more than the bound: nothing changes, nothing is stored.
 * Replays of held keys, calls without a key and other users are unaffected.
 */
import t from 'tap'
import type { Test } from 'tap'
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { TEST_REDIS_URL, closeRedis, deleteKeysWithPrefix, testRedisPrefix } from '../helpers/redis.ts'
import { newUserId } from '../helpers/usage.ts'
import { DAY, M, amount, request } from './conformance/suite.ts'

async function storeWithBound(t: Test, bound: number) {
  const redis = createRedisClient({ url: TEST_REDIS_URL, commandTimeoutMs: 5000 })
  await connectRedis(redis, TEST_REDIS_URL)
  const prefix = testRedisPrefix()
  const store = new RedisCounterStore(redis, { prefix, idempotencyKeysPerUser: bound })
  t.teardown(async () => {
    await deleteKeysWithPrefix(redis, prefix).catch(() => {})
    await closeRedis(redis)
  })
  return { store, redis }
}

const key = (k: string, n: number) => ({ key: k, fingerprint: `consume|api_calls=${n}`, context: { day: DAY, tier: 'free' } })

t.test('with a bound of 5, the 6th new key is refused; replays and calls without a key still work', async (t) => {
  const { store, redis } = await storeWithBound(t, 5)
  const user = newUserId()
  for (let i = 1; i <= 4; i++) {
    t.match(await store.decide(request(user, 'consume', [amount('api_calls', 1, 5)], { idempotency: key(`k${i}`, 1) })), { outcome: 'allowed' })
  }
  t.match(await store.decide(request(user, 'consume', [amount('api_calls', 9, 5)], { idempotency: key('k5', 9) })), { outcome: 'denied' },
    'a denial stores its key too (its replay must deny): the 5th')
  const sixth = await store.decide(request(user, 'consume', [amount('api_calls', 1, 5)], { idempotency: key('k6', 1) }))
  t.match(sixth, { outcome: 'too-many-keys', replayed: false, current: [] }, 'the 6th new key is refused')
  t.ok((sixth.retryAfterMs ?? 0) > 86_000_000 && (sixth.retryAfterMs ?? 0) <= 86_400_000, 'room again when the oldest key expires, ~24 h')
  t.match(await store.decide(request(user, 'increment', [amount('api_calls', 1)], { idempotency: key('k7', 1) })), { outcome: 'too-many-keys' },
    'increments too')
  t.same((await store.decide(request(user, 'check', [amount('api_calls', 0, 5)]))).current, [4 * M], 'the refused calls counted nothing')
  t.equal(await redis.exists(store.keys.idempotency(user, 'k6')), 0, 'and stored nothing')

  for (let i = 1; i <= 4; i++) {
    t.match(await store.decide(request(user, 'consume', [amount('api_calls', 1, 5)], { idempotency: key(`k${i}`, 1) })),
      { outcome: 'allowed', replayed: true }, `replay of k${i}`)
  }
  t.match(await store.decide(request(user, 'consume', [amount('api_calls', 9, 5)], { idempotency: key('k5', 9) })), { outcome: 'denied', replayed: true })
  t.match(await store.decide(request(user, 'consume', [amount('api_calls', 1, 5)])), { outcome: 'allowed', current: [5 * M] }, 'a call without a key')
  t.match(await store.decide(request(newUserId(), 'consume', [amount('api_calls', 1, 5)], { idempotency: key('k6', 1) })), { outcome: 'allowed' },
    'another user has room of their own')

  const index = store.keys.idempotencyIndex(user)
  t.same((await redis.zrange(index, '0', '-1')).sort(), ['k1', 'k2', 'k3', 'k4', 'k5'], 'the index holds the five keys as named')
  t.ok((await redis.pttl(index)) > 86_000_000, 'the index expires with its newest key')
  t.equal(index.slice(0, index.indexOf('}') + 1), store.keys.idempotency(user, 'k1').slice(0, index.indexOf('}') + 1), 'same hash tag as the keys')

  // A key that expired leaves room: its index entry goes at the next new key.
  await redis.zadd(index, 'XX', String(Date.now() - 1000), 'k1')
  await redis.del(store.keys.idempotency(user, 'k1'))
  t.match(await store.decide(request(user, 'refund', [amount('api_calls', 5)])), { outcome: 'allowed' })
  t.match(await store.decide(request(user, 'consume', [amount('api_calls', 1, 5)], { idempotency: key('k6', 1) })), { outcome: 'allowed', replayed: false },
    'room again after the oldest expired')
  t.match(await store.decide(request(user, 'consume', [amount('api_calls', 1, 5)], { idempotency: key('k8', 1) })), { outcome: 'too-many-keys' },
    'and full again')
})

t.test('a bound of 0 means none', async (t) => {
  const { store } = await storeWithBound(t, 0)
  const user = newUserId()
  for (let i = 0; i < 20; i++) {
    t.equal((await store.decide(request(user, 'increment', [amount('api_calls', 1)], { idempotency: key(`n${i}`, 1) }))).outcome, 'allowed')
  }
})

t.test('the bound is checked when the store is built', async (t) => {
  const { redis } = await storeWithBound(t, 1)
  t.throws(() => new RedisCounterStore(redis, { idempotencyKeysPerUser: -1 }), TypeError)
  t.throws(() => new RedisCounterStore(redis, { idempotencyKeysPerUser: 1.5 }), TypeError)
})

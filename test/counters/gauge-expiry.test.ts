/**
 * Issue 11, finding 10: the storage gauge of a user gone for a long time no longer stays in Redis
 * forever. It expires GAUGE_TTL_S (35 days) after its last write; every storage change, every
 * first change of a day and a reset renew it. An expired gauge is lost state like any other: the
 * next decision rebuilds it from the latest storage_gb in daily_usage before deciding.
 */
import t from 'tap'
import { DAY_MS } from '../../src/clock.ts'
import { GAUGE_TTL_S } from '../../src/counters/redis/keys.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { insertUser, todayNoon } from './fixtures.ts'

t.test('the gauge expires 35 days after its last write, and every write renews it', async (t) => {
  const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })
  const user = newUserId()
  const gauge = h.store.keys.gauge(user)
  const ttl = (): Promise<number> => h.redis.ttl(gauge)
  const renewed = async (what: string): Promise<void> => {
    const left = await ttl()
    t.ok(left > GAUGE_TTL_S - 60 && left <= GAUGE_TTL_S, `${what}: ${left} s left`)
  }
  t.equal(GAUGE_TTL_S, 35 * 86_400)

  await h.service.incrementUsage(user, 'storage', 3)
  await renewed('a storage increment sets it')
  await h.redis.expire(gauge, 100)
  await h.service.consume(user, { storage: 1 })
  await renewed('a storage consume renews it')
  await h.redis.expire(gauge, 100)
  await h.service.consume(user, { api_calls: 1 })
  t.ok((await ttl()) <= 100, 'a later change of the same day does not touch it (no extra command)')
  h.clock.advance(DAY_MS)
  await h.service.consume(user, { api_calls: 1 })
  await renewed("a day's first change renews it: an active user keeps it")
  await h.redis.expire(gauge, 100)
  await h.admin.reset({ userId: user, metric: 'storage' })
  await renewed('a storage reset renews it')
})

t.test('after the gauge expires, the next decision rebuilds it from daily_usage', async (t) => {
  const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })
  const user = newUserId()
  await insertUser(h.pool, user, 'free')
  const gauge = h.store.keys.gauge(user)
  await h.service.incrementUsage(user, 'storage', 2.5)
  await h.service.consume(user, { deployments: 2 })
  await h.flusher.flushAll()

  await h.redis.del(gauge) // what its expiry does
  const status = await h.service.status(user)
  t.equal(status.metrics.storage.current, 2.5, 'the gauge is rebuilt from the latest storage_gb')
  t.equal(status.metrics.deployments.current, 2, "and the day's counts are kept")
  t.equal(Number(await h.redis.get(gauge)), 2.5e6, 'the gauge key is back')
  t.ok((await h.redis.ttl(gauge)) > GAUGE_TTL_S - 60, 'with its expiry')
  t.match(await h.service.consume(user, { storage: 2.5 }), { allowed: true, metrics: { storage: { current: 5 } } })
  t.match(await h.service.consume(user, { storage: 0.000001 }), { allowed: false }, 'the limit still holds')
  await h.flusher.flushAll()

  // Gone on a later day: the first decision of the new day finds neither the gauge nor a day hash.
  h.clock.advance(2 * DAY_MS)
  await h.redis.del(gauge)
  t.match(await h.service.consume(user, { storage: 0.000001 }), { allowed: false, metrics: { storage: { current: 5 } } },
    'rebuilt from the last recorded day, never from 0')
  t.equal((await h.service.status(user)).metrics.deployments.current, 0, 'a new day starts at 0')
})

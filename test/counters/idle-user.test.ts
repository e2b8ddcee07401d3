/**
 * Storage in layout version 2: each day's entry holds it, and a user's first decision of a day
 * carries it from yesterday's entry, or, for a user away longer, from the gauges of the current or
 * last period (GAUGE_PERIOD_DAYS). A user away longer than that is no longer known to Redis (the
 * gauges hash expired): the next decision rebuilds the state from daily_usage (the latest
 * storage_gb), never from 0.
 */
import t from 'tap'
import { DAY_MS, utcDay } from '../../src/clock.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { dayRef, hfield, insertUser, todayNoon } from './fixtures.ts'

t.test("a day's first decision carries storage from yesterday's entry, without Postgres", async (t) => {
  const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })
  const user = newUserId()
  await insertUser(h.pool, user, 'free')
  await h.service.incrementUsage(user, 'storage', 3)
  await h.service.consume(user, { deployments: 2 })
  h.clock.advance(DAY_MS)

  let pgQueries = 0
  const query = h.pool.query.bind(h.pool) as (...args: unknown[]) => unknown
  Object.assign(h.pool, { query: (...args: unknown[]) => ((pgQueries += 1), query(...args)) })
  t.teardown(() => Object.assign(h.pool, { query }))
  const next = await h.service.consume(user, { deployments: 1, storage: 1 })
  t.match(next, { allowed: true, metrics: { deployments: { current: 1 }, storage: { current: 4 } } })
  t.equal(pgQueries, 0, 'no Postgres read: yesterday is in Redis')
  t.equal(await hfield(h.redis, dayRef(h.store, user, utcDay(h.clock.now())), 's'), 4e6, "today's entry holds the storage")
})

t.test('a user away five days is known by the gauge; away longer than two periods, rebuilt from daily_usage', async (t) => {
  const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })
  const user = newUserId()
  await insertUser(h.pool, user, 'free')
  await h.service.incrementUsage(user, 'storage', 2.5)
  await h.service.consume(user, { storage: 2.5, deployments: 2 })
  await h.flusher.flushAll()

  h.clock.advance(5 * DAY_MS)
  t.equal(await hfield(h.redis, dayRef(h.store, user, utcDay(h.clock.now() - DAY_MS)), 'v'), 0, 'no entry yesterday')
  t.match(await h.service.consume(user, { storage: 0.000001 }), { allowed: false, metrics: { storage: { current: 5 } } },
    'the gauge carries the storage')

  // Gone from Redis: what the gauges' expiry does to a user away longer than two periods.
  await h.redis.del(...(await h.redis.keys(`${h.store.keys.prefix}*:g:*`)))
  h.clock.advance(DAY_MS)
  t.match(await h.service.consume(user, { storage: 0.000001 }), { allowed: false, metrics: { storage: { current: 5 } } },
    'rebuilt from the last recorded day: the storage limit still holds')
  t.equal((await h.service.status(user)).metrics.deployments.current, 0, 'a new day starts at 0')
  t.match(await h.service.incrementUsage(user, 'storage', -1), { metrics: { storage: { current: 4 } } })
})

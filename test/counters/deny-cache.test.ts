/**
 * The deny cache: repeated denials of a daily limit are answered without Redis, identically, and
 * never outlive what could end them (refund, reset, tier or limit change, midnight).
 */
import t from 'tap'
import { DAY_MS, utcDay } from '../../src/clock.ts'
import type { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import type { UsageHarness } from '../helpers/usage.ts'
import { insertUser, pollUntil } from './fixtures.ts'

/** Counts the store calls (each is one Redis round trip). */
function countStoreCalls(store: RedisCounterStore): { readonly n: number } {
  const counter = { n: 0 }
  const decide = store.decide.bind(store)
  store.decide = (req, options) => {
    counter.n++
    return decide(req, options)
  }
  return counter
}

async function spendAll(h: UsageHarness, user: string): Promise<void> {
  for (let i = 0; i < 10; i++) await h.service.consume(user, { deployments: 1 })
}

t.test('repeated denials cost no Redis call and answer like Redis did', async (t) => {
  const h = await createUsageHarness(t)
  const user = newUserId()
  await spendAll(h, user)
  const calls = countStoreCalls(h.store)
  const first = await h.service.consume(user, { deployments: 1 })
  t.equal(first.allowed, false)
  t.equal(calls.n, 1, 'the first denial asks Redis')
  const again = await Promise.all(Array.from({ length: 200 }, () => h.service.consume(user, { deployments: 1 })))
  t.equal(calls.n, 1, '200 more denials asked nothing')
  t.ok(again.every((r) => !r.allowed && r.deniedMetric === 'deployments'), 'all denied')
  t.same(again[0]?.metrics, first.metrics, 'same numbers as the Redis denial')
  t.equal(again[0]?.reason, 'Daily deployments limit exceeded')

  t.equal((await h.service.consume(user, { api_calls: 1 })).allowed, true, 'other metrics are unaffected')
  await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'k-1' })
  t.equal(calls.n, 3, 'idempotent calls always go to Redis')
  t.equal((await h.service.status(user)).metrics.deployments.current, 10, 'nothing was counted')
})

t.test('a refund, a reset, a tier change, a limit change or midnight ends a remembered denial', async (t) => {
  const h = await createUsageHarness(t)

  const refunded = newUserId()
  await spendAll(h, refunded)
  t.equal((await h.service.consume(refunded, { deployments: 1 })).allowed, false)
  await h.service.refund(refunded, { deployments: 1 }, utcDay(h.clock.now()))
  t.equal((await h.service.consume(refunded, { deployments: 1 })).allowed, true, 'after a refund')

  const reset = newUserId()
  await spendAll(h, reset)
  t.equal((await h.service.consume(reset, { deployments: 1 })).allowed, false)
  await h.admin.reset({ userId: reset })
  t.equal((await h.service.consume(reset, { deployments: 1 })).allowed, true, 'after a reset')

  const upgraded = newUserId()
  await insertUser(h.db.pool, upgraded, 'free')
  await spendAll(h, upgraded)
  t.equal((await h.service.consume(upgraded, { deployments: 1 })).allowed, false)
  await h.db.pool.query(`UPDATE users SET tier = 'pro' WHERE id = $1`, [upgraded])
  await pollUntil(async () => (await h.service.consume(upgraded, { deployments: 1 })).allowed, 1000, 'admitted as pro')
  t.pass('after a tier change by SQL, within 1 s')

  const raised = newUserId()
  await spendAll(h, raised)
  t.equal((await h.service.consume(raised, { deployments: 1 })).allowed, false)
  await h.db.pool.query(`UPDATE usage_limits SET max_deployments_per_day = 11 WHERE tier = 'free'`)
  t.teardown(() => h.db.pool.query(`UPDATE usage_limits SET max_deployments_per_day = 10 WHERE tier = 'free'`))
  await pollUntil(async () => (await h.service.consume(raised, { deployments: 1 })).allowed, 1000, 'admitted under the raised limit')
  t.pass('after a limit change by SQL, within 1 s')

  const sleeper = newUserId()
  await h.db.pool.query(`UPDATE usage_limits SET max_deployments_per_day = 10 WHERE tier = 'free'`)
  await pollUntil(async () => h.limits.tierLimits('free')?.deployments === 10_000_000, 1000, 'limit back to 10')
  await spendAll(h, sleeper)
  t.equal((await h.service.consume(sleeper, { deployments: 1 })).allowed, false)
  h.clock.advance(DAY_MS)
  t.equal((await h.service.consume(sleeper, { deployments: 1 })).allowed, true, 'after midnight')
})

/**
 * Issue 11, finding 1: a metric's total has a ceiling (MAX_TOTAL, 9e9 units) that every layer
 * holds exactly. An increment or consume past it is a 400 naming the metric and counts nothing;
 * a daily_usage row holding more (written by hand, or before the ceiling existed) is read at the
 * ceiling when Redis lost its state, so the user's routes and the global reset keep working.
 */
import t from 'tap'
import { MAX_TOTAL } from '../../src/metrics.ts'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'
import { TEST_REDIS_URL, closeRedis, deleteKeysWithPrefix } from '../helpers/redis.ts'
import { Redis } from 'ioredis'

function client(h: TestApp, headers: Record<string, string>) {
  return {
    post: (url: string, payload: object) => h.app.inject({ method: 'POST', url, headers, payload }),
    put: (url: string, payload: object) => h.app.inject({ method: 'PUT', url, headers, payload }),
    get: (url: string) => h.app.inject({ method: 'GET', url, headers }),
  }
}

/** What a Redis restart without persistence does to this app's keys. */
async function loseRedisState(h: TestApp): Promise<void> {
  const redis = new Redis(TEST_REDIS_URL)
  redis.on('error', () => {})
  try {
    await deleteKeysWithPrefix(redis, h.prefix)
  } finally {
    await closeRedis(redis)
  }
}

t.test('an increment past the maximum total is refused with a 400 naming the metric', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const c = client(h, u.headers)
  for (let i = 0; i < 9; i++) {
    t.equal((await c.post('/api/usage/increment', { metric: 'storage', amount: 1e9 })).statusCode, 200, `increment ${i + 1}`)
  }
  const over = await c.post('/api/usage/increment', { metric: 'storage', amount: 1e9, idempotency_key: 'tenth' })
  t.equal(over.statusCode, 400)
  t.match(over.json(), {
    detail: { error: 'Invalid request', message: /storage.*maximum total of 9000000000 GB/, field: 'amount', metric: 'storage', maximum: MAX_TOTAL },
  })
  t.equal((await c.post('/api/usage/consume', { metrics: { api_calls: 1, storage: 0.5 } })).statusCode, 429,
    'a consume over a limit is an ordinary denial')
  const tier = await client(h, h.admin().headers).put(`/api/usage/admin/users/${u.id}/tier`, { tier: 'enterprise' })
  t.equal(tier.statusCode, 200, 'unlimited now')
  const consume = await c.post('/api/usage/consume', { metrics: { api_calls: 1, storage: 0.5 } })
  t.equal(consume.statusCode, 400, 'a consume an unlimited tier would admit is refused at the ceiling')
  t.match(consume.json(), { detail: { field: 'metrics.storage', metric: 'storage' } })
  const status = (await c.get('/api/usage/status')).json()
  t.equal(status.metrics.storage.current, 9e9, 'nothing of the refused calls was counted')
  t.equal(status.metrics.api_calls.current, 0)
  t.equal((await c.post('/api/usage/increment', { metric: 'storage', amount: -1, idempotency_key: 'tenth' })).statusCode, 200,
    'the refused key was not stored')
})

t.test('a daily_usage row past the maximum: after Redis loses its state, 200/429 — never 500 — and the global reset works', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const c = client(h, u.headers)
  const admin = client(h, h.admin().headers)
  t.equal((await c.get('/api/usage/status')).statusCode, 200, 'the user exists')
  const day = new Date(h.clock.now()).toISOString().slice(0, 10)
  await h.db.pool.query(
    `INSERT INTO daily_usage (user_id, date, deployments_created, api_calls, compute_hours, storage_gb, version)
     VALUES ($1, $2, 9223372036854775807, 10000000000, 1e30, 12345678901234567890.1234567, 5)
     ON CONFLICT (user_id, date) DO UPDATE SET deployments_created = EXCLUDED.deployments_created,
       api_calls = EXCLUDED.api_calls, compute_hours = EXCLUDED.compute_hours, storage_gb = EXCLUDED.storage_gb, version = 5`,
    [u.id, day],
  )
  await loseRedisState(h)

  const status = await c.get('/api/usage/status')
  t.equal(status.statusCode, 200, 'status')
  t.match(status.json().metrics, {
    deployments: { current: MAX_TOTAL }, api_calls: { current: MAX_TOTAL }, compute_hours: { current: MAX_TOTAL }, storage: { current: MAX_TOTAL },
  }, 'every value read at the ceiling')
  t.equal((await c.post('/api/usage/check-limit', { metric: 'deployments' })).statusCode, 200, 'check-limit')
  t.equal((await c.post('/api/usage/consume', { metric: 'deployments' })).statusCode, 429, 'consume: over the free limit')
  t.equal((await c.post('/api/usage/increment', { metric: 'storage', amount: -1 })).statusCode, 200, 'increment')
  t.equal((await c.post('/api/usage/increment', { metric: 'compute_hours', amount: 1 })).statusCode, 400, 'past the ceiling: a 400')

  // The global reset flushes, then rebuilds and zeroes every user active today.
  await loseRedisState(h)
  const reset = await admin.post('/api/usage/admin/manual-reset', {})
  t.equal(reset.statusCode, 200, 'the global manual reset')
  const after = (await c.get('/api/usage/status')).json()
  t.match(after.metrics, { deployments: { current: 0 }, api_calls: { current: 0 }, compute_hours: { current: 0 } }, 'daily counts zeroed')
  t.equal((await c.post('/api/usage/consume', { metric: 'deployments' })).statusCode, 200, 'and the user deploys again')
})

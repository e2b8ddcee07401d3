/**
 * USAGE_FAIL_MODE over HTTP, with the app's Redis really down (a private redis-server, stopped):
 * `closed` answers 503 `{"detail": {"error": "Service not available", ...}}` on every spend and
 * check; `open` admits (200/201) and says `degraded: true`, claiming no RateLimit numbers it does
 * not know; /ready says redis is down in both; decisions resume by themselves when Redis returns.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { Test } from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { startRedisServer } from '../helpers/redis-server.ts'
import type { RedisServer } from '../helpers/redis-server.ts'

async function setup(t: Test, mode: 'open' | 'closed'): Promise<{ h: TestApp; redis: RedisServer; user: ReturnType<TestApp['user']> }> {
  const redis = await startRedisServer(t)
  const db = await createTestDatabase(t)
  const h = await buildTestApp(t, { db, env: { REDIS_URL: redis.url, USAGE_FAIL_MODE: mode, REDIS_COMMAND_TIMEOUT_MS: '200' } })
  const user = h.user()
  // The user is known (provisioned, counters in Redis) before Redis goes away.
  t.equal((await h.app.inject({ method: 'POST', url: '/api/deploy', headers: user.headers })).statusCode, 201)
  await redis.stop()
  return { h, redis, user }
}

const requests = [
  { name: 'consume', url: '/api/usage/consume', payload: { metric: 'deployments', amount: 1 }, ok: 200 },
  { name: 'consume (metrics)', url: '/api/usage/consume', payload: { metrics: { api_calls: 5, compute_hours: 0.5 } }, ok: 200 },
  { name: 'check-limit', url: '/api/usage/check-limit', payload: { metric: 'api_calls', amount: 3 }, ok: 200 },
  { name: 'increment', url: '/api/usage/increment', payload: { metric: 'compute_hours', amount: 1.25 }, ok: 200 },
  { name: 'deploy', url: '/api/deploy', payload: undefined, ok: 201 },
] as const

async function readyReport(t: Test, h: TestApp): Promise<void> {
  const ready = await h.app.inject({ url: '/ready' })
  t.equal(ready.statusCode, 503, '/ready is 503')
  t.match(ready.json(), { detail: { error: 'Service not ready', message: /redis/, checks: { redis: 'down', postgres: 'ok' } } })
}

async function waitForRecovery(h: TestApp, headers: Record<string, string>): Promise<number> {
  let status = 0
  for (let i = 0; i < 100 && status !== 200; i++) {
    await sleep(50)
    status = (await h.app.inject({ method: 'POST', url: '/api/usage/check-limit', headers, payload: { metric: 'deployments' } })).statusCode
  }
  return status
}

t.test('USAGE_FAIL_MODE=closed: 503 Service not available', async (t) => {
  const { h, redis, user } = await setup(t, 'closed')
  for (const r of requests) {
    const res = await h.app.inject({ method: 'POST', url: r.url, headers: user.headers, ...(r.payload ? { payload: r.payload } : {}) })
    t.equal(res.statusCode, 503, `${r.name}: 503`)
    t.match(res.json(), { detail: { error: 'Service not available', message: String } }, `${r.name}: envelope`)
    t.equal(res.headers['retry-after'], '1', `${r.name}: Retry-After`)
    t.notMatch(res.body, /ECONNREFUSED|127\.0\.0\.1|stack/, `${r.name}: no internals`)
  }
  const status = await h.app.inject({ url: '/api/usage/status', headers: user.headers })
  t.equal(status.statusCode, 503, 'status too')
  t.equal(status.json().detail.error, 'Service not available')
  // bad input is still bad input, and auth still auth
  t.equal((await h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: user.headers, payload: { metric: 'nope' } })).statusCode, 400)
  t.equal((await h.app.inject({ method: 'POST', url: '/api/usage/consume', payload: { metric: 'deployments' } })).statusCode, 401)
  await readyReport(t, h)

  // Redis returns (empty: this one has no persistence): decisions resume without a restart of the app.
  await redis.start()
  t.equal(await waitForRecovery(h, user.headers), 200, 'decisions resume when Redis is back')
  t.equal((await h.app.inject({ url: '/ready' })).statusCode, 200, '/ready is 200 again')
})

t.test('USAGE_FAIL_MODE=open: admitted with degraded: true', async (t) => {
  const { h, user } = await setup(t, 'open')
  for (const r of requests) {
    const res = await h.app.inject({ method: 'POST', url: r.url, headers: user.headers, ...(r.payload ? { payload: r.payload } : {}) })
    t.equal(res.statusCode, r.ok, `${r.name}: ${r.ok}`)
    t.equal(res.json().degraded, true, `${r.name}: degraded: true`)
    t.notOk('ratelimit-remaining' in res.headers, `${r.name}: no RateLimit numbers it cannot know`)
    t.notOk('retry-after' in res.headers)
  }
  const consume = await h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: user.headers, payload: { metric: 'deployments' } })
  t.match(consume.json(), { allowed: true, tier: 'free', metric: 'deployments', amount: 1, current: null, remaining: null, limit: 10, degraded: true })
  const check = await h.app.inject({ method: 'POST', url: '/api/usage/check-limit', headers: user.headers, payload: { metric: 'deployments' } })
  t.match(check.json(), { allowed: true, metric: 'deployments', amount: 1, current: null, limit: 10, remaining: null, tier: 'free', reason: null, degraded: true })
  const deploy = await h.app.inject({ method: 'POST', url: '/api/deploy', headers: user.headers })
  t.equal(deploy.statusCode, 201)
  t.match(deploy.json(), { deployment_id: /^[0-9a-f-]{36}$/, degraded: true })
  // status has no degraded form: it cannot report usage it cannot read
  t.equal((await h.app.inject({ url: '/api/usage/status', headers: user.headers })).statusCode, 503)
  await readyReport(t, h)
})

t.test('USAGE_FAIL_MODE=open: a healthy answer is not degraded', async (t) => {
  const redis = await startRedisServer(t)
  const h = await buildTestApp(t, { env: { REDIS_URL: redis.url, USAGE_FAIL_MODE: 'open' } })
  const u = h.user()
  const deploy = await h.app.inject({ method: 'POST', url: '/api/deploy', headers: u.headers })
  t.equal(deploy.statusCode, 201)
  t.notOk('degraded' in deploy.json())
  t.equal(deploy.headers['ratelimit-remaining'], '9')
  const consume = await h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: u.headers, payload: { metric: 'api_calls' } })
  t.notOk('degraded' in consume.json())
})

/**
 * Invariant 1 over HTTP: 200 concurrent guarded deploys by one free user (limit 10) admit exactly
 * 10 and deny 190 with the spec's 429; the count afterwards is exactly 10, in Redis and in
 * daily_usage.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'

const SLOW_MACHINE = { REDIS_COMMAND_TIMEOUT_MS: '3000' }

t.test('200 concurrent POST /api/deploy by one (known) free user: exactly 10 admitted', async (t) => {
  // A generous decision timeout: this is about exact admission, not latency, and a busy test
  // machine must not turn a slow decision into a 503.
  const { app, user, db } = await buildTestApp(t, { env: SLOW_MACHINE, quota: { flushIntervalMs: 50 } })
  const u = user()
  // The user has been seen before (its counters exist in Redis): the steady state.
  t.equal((await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })).statusCode, 200)
  const responses = await Promise.all(
    Array.from({ length: 200 }, () => app.inject({ method: 'POST', url: '/api/deploy', headers: u.headers })),
  )
  const byStatus = new Map<number, number>()
  for (const r of responses) byStatus.set(r.statusCode, (byStatus.get(r.statusCode) ?? 0) + 1)
  t.same(Object.fromEntries(byStatus), { 201: 10, 429: 190 })

  const ids = new Set(responses.filter((r) => r.statusCode === 201).map((r) => r.json().deployment_id as string))
  t.equal(ids.size, 10, 'ten distinct deployments')
  const remaining = responses.filter((r) => r.statusCode === 201).map((r) => Number(r.headers['ratelimit-remaining'])).sort((a, b) => a - b)
  t.same(remaining, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'each admitted request saw its own remaining')
  for (const r of responses.filter((x) => x.statusCode === 429)) {
    t.has(r.json(), { detail: { error: 'Usage limit exceeded', message: 'Daily deployments limit exceeded', current: 10, limit: 10, tier: 'free', metric: 'deployments' } })
  }

  const status = await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
  t.equal(status.json().metrics.deployments.current, 10)
  t.equal(status.json().metrics.deployments.remaining, 0)

  // ...and exactly 10 reach daily_usage
  let row: { deployments_created: number } | undefined
  for (let i = 0; i < 100 && row?.deployments_created !== 10; i++) {
    await sleep(50)
    row = (await db.pool.query<{ deployments_created: number }>('SELECT deployments_created FROM daily_usage WHERE user_id = $1', [u.id])).rows[0]
  }
  t.equal(row?.deployments_created, 10)
})

t.test('200 concurrent first requests of a brand-new user: exactly 10 admitted, no 503', async (t) => {
  // First sight of the user: the race includes provisioning and the rebuild of its counters from
  // Postgres (one shared read), which must neither over-admit nor turn into 503s.
  const { app, user } = await buildTestApp(t, { env: SLOW_MACHINE })
  for (let round = 0; round < 3; round++) {
    const u = user()
    const responses = await Promise.all(
      Array.from({ length: 200 }, () => app.inject({ method: 'POST', url: '/api/deploy', headers: u.headers })),
    )
    const count = (status: number) => responses.filter((r) => r.statusCode === status).length
    t.equal(count(201), 10, 'exactly 10 admitted (invariant 1)')
    t.equal(count(503), 0, 'no 503 on a cold start')
    t.equal(count(429), 190, 'the rest denied')
    const status = await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
    t.equal(status.json().metrics.deployments.current, 10)
  }
})

t.test('concurrent consumes of a decimal metric never pass the limit', async (t) => {
  const { app, user } = await buildTestApp(t, { env: SLOW_MACHINE })
  const u = user()
  await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
  // 10 compute hours in 0.3 h steps: 33 fit (9.9), the rest are denied
  const responses = await Promise.all(
    Array.from({ length: 60 }, () => app.inject({ method: 'POST', url: '/api/usage/consume', headers: u.headers, payload: { metric: 'compute_hours', amount: 0.3 } })),
  )
  t.equal(responses.filter((r) => r.statusCode === 200).length, 33)
  t.equal(responses.filter((r) => r.statusCode === 429).length, 27)
  const status = await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
  t.equal(status.json().metrics.compute_hours.current, 9.9)
})

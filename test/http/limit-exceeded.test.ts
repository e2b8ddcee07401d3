/**
 * The 429 of DESIGN 1.8: the spec's body (extra fields allowed) for every metric and every way of
 * spending (the guarded demo route and /consume), Retry-After = seconds to the next UTC midnight
 * under the injected clock (none for the storage gauge), the IETF RateLimit fields, RateLimit
 * headers on guarded successes, and the first denied metric in registry order.
 */
import t from 'tap'
import type { Test } from 'tap'
import { buildTestApp } from '../helpers/app.ts'

const DAY = 86_400

t.test('429 bodies and headers', async (t) => {
  const h = await buildTestApp(t, { now: '2026-11-28T23:00:00.000Z' })
  const { app, clock } = h

  const post = (headers: Record<string, string>, url: string, payload?: object) =>
    app.inject({ method: 'POST', url, headers, ...(payload === undefined ? {} : { payload }) })

  function spec(metric: string, current: number, limit: number, message = `Daily ${metric} limit exceeded`) {
    return { error: 'Usage limit exceeded', message, current, limit, tier: 'free', metric }
  }

  function rateLimitHeadersPresent(t: Test, headers: Record<string, unknown>) {
    for (const name of ['ratelimit-limit', 'ratelimit-remaining', 'ratelimit-policy', 'ratelimit']) {
      t.type(headers[name], 'string', `${name} present`)
    }
  }

  await t.test('deployments via the guarded /api/deploy', async (t) => {
    const u = h.user()
    for (let i = 1; i <= 10; i++) {
      const ok = await post(u.headers, '/api/deploy')
      t.equal(ok.statusCode, 201)
      t.equal(ok.headers['ratelimit-limit'], '10', 'guarded success carries RateLimit-Limit')
      t.equal(ok.headers['ratelimit-remaining'], String(10 - i))
      t.equal(ok.headers['ratelimit-reset'], '3600')
      t.equal(ok.headers['ratelimit-policy'], `"deployments";q=10;w=${DAY}`)
      t.equal(ok.headers.ratelimit, `"deployments";r=${10 - i};t=3600`)
      t.notOk(ok.headers['retry-after'], 'no Retry-After on success')
    }
    const res = await post(u.headers, '/api/deploy')
    t.equal(res.statusCode, 429)
    t.match(res.headers['content-type'], /^application\/json/)
    t.has(res.json(), { detail: spec('deployments', 10, 10) })
    t.equal(res.json().detail.message, 'Daily deployments limit exceeded')
    t.equal(res.headers['retry-after'], '3600', 'seconds to 00:00:00Z from 23:00:00Z')
    t.equal(res.headers['ratelimit-limit'], '10')
    t.equal(res.headers['ratelimit-remaining'], '0')
    t.equal(res.headers['ratelimit-reset'], '3600')
    t.equal(res.headers['ratelimit-policy'], `"deployments";q=10;w=${DAY}`)
    t.equal(res.headers.ratelimit, `"deployments";r=0;t=3600`)
  })

  await t.test('a remembered denial answers exactly as Redis did, and its clock fields move', async (t) => {
    const u = h.user()
    for (let i = 1; i <= 10; i++) await post(u.headers, '/api/deploy')
    const strip = (headers: Record<string, unknown>) => {
      // What differs per request whoever answers: its id, date and connection.
      const { date, connection, 'keep-alive': keepAlive, 'x-request-id': requestId, ...rest } = headers
      void date; void connection; void keepAlive; void requestId
      return rest
    }
    const fromRedis = await post(u.headers, '/api/deploy') // decided by Redis, then remembered
    const remembered = await post(u.headers, '/api/deploy') // answered from the deny cache
    const again = await post(u.headers, '/api/deploy') // the rendering reused within the second
    for (const res of [fromRedis, remembered, again]) t.equal(res.statusCode, 429)
    t.same(remembered.json(), fromRedis.json(), 'same body')
    t.same(strip(remembered.headers), strip(fromRedis.headers), 'same headers')
    t.equal(again.body, remembered.body)
    t.same(strip(again.headers), strip(remembered.headers))

    clock.advance(1000)
    const later = await post(u.headers, '/api/deploy') // still remembered, the clock in another second
    t.equal(later.statusCode, 429)
    t.equal(later.headers['retry-after'], '3599', 'Retry-After counts down with the clock')
    t.equal(later.headers.ratelimit, '"deployments";r=0;t=3599')
    t.same(later.json(), fromRedis.json(), 'the body is the same denial')
    clock.set('2026-11-28T23:00:00.000Z')
  })

  await t.test('deployments via /consume; Retry-After follows the clock', async (t) => {
    clock.set('2026-11-28T12:00:00.000Z')
    t.teardown(() => clock.set('2026-11-28T23:00:00.000Z'))
    const u = h.user()
    const ok = await post(u.headers, '/api/usage/consume', { metric: 'deployments', amount: 10 })
    t.equal(ok.statusCode, 200)
    t.equal(ok.headers['ratelimit-remaining'], '0')
    t.equal(ok.headers['ratelimit-reset'], String(12 * 3600))
    clock.set('2026-11-28T23:59:59.250Z')
    const res = await post(u.headers, '/api/usage/consume', { metric: 'deployments' })
    t.equal(res.statusCode, 429)
    t.has(res.json(), { detail: spec('deployments', 10, 10) })
    t.equal(res.headers['retry-after'], '1', 'rounded up, at least 1')
    t.equal(res.headers['ratelimit-reset'], '1')
  })

  await t.test('api_calls', async (t) => {
    const u = h.user()
    t.equal((await post(u.headers, '/api/usage/consume', { metric: 'api_calls', amount: 4990 })).statusCode, 200)
    const res = await post(u.headers, '/api/usage/consume', { metric: 'api_calls', amount: 11 })
    t.equal(res.statusCode, 429)
    t.has(res.json(), { detail: spec('api_calls', 4990, 5000) })
    t.equal(res.headers['retry-after'], '3600')
    t.equal(res.headers['ratelimit-limit'], '5000')
    t.equal(res.headers['ratelimit-remaining'], '10')
    t.equal(res.headers['ratelimit-reset'], '3600')
    rateLimitHeadersPresent(t, res.headers)
    // the denial counted nothing
    const status = await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
    t.equal(status.json().metrics.api_calls.current, 4990)
  })

  await t.test('compute_hours (decimal amounts stay JSON numbers)', async (t) => {
    const u = h.user()
    t.equal((await post(u.headers, '/api/usage/consume', { metric: 'compute_hours', amount: 9.8 })).statusCode, 200)
    const res = await post(u.headers, '/api/usage/consume', { metric: 'compute_hours', amount: 0.25 })
    t.equal(res.statusCode, 429)
    t.has(res.json(), { detail: spec('compute_hours', 9.8, 10) })
    t.match(res.body, /"current":9\.8[,}]/, 'current is the number 9.8 on the wire')
    t.equal(res.headers['retry-after'], '3600')
    t.equal(res.headers['ratelimit-limit'], '10')
    t.equal(res.headers['ratelimit-remaining'], '0', 'remaining 0.2 rounds down')
    rateLimitHeadersPresent(t, res.headers)
  })

  await t.test('storage: a gauge denial has no Retry-After', async (t) => {
    const u = h.user()
    t.equal((await post(u.headers, '/api/usage/increment', { metric: 'storage', amount: 4.5 })).statusCode, 200)
    const res = await post(u.headers, '/api/usage/consume', { metric: 'storage', amount: 1 })
    t.equal(res.statusCode, 429)
    t.has(res.json(), { detail: spec('storage', 4.5, 5, 'Storage limit exceeded') })
    t.equal(res.json().detail.tier, 'free')
    t.notOk('retry-after' in res.headers, 'no Retry-After: a gauge does not reset')
    t.notOk('ratelimit-reset' in res.headers, 'no RateLimit-Reset for a gauge')
    t.equal(res.headers['ratelimit-limit'], '5')
    t.equal(res.headers['ratelimit-remaining'], '0')
    t.equal(res.headers['ratelimit-policy'], '"storage";q=5')
    t.equal(res.headers.ratelimit, '"storage";r=0')
  })

  await t.test('multi-metric: the first denied metric in registry order is named', async (t) => {
    const u = h.user()
    t.equal((await post(u.headers, '/api/usage/consume', { metrics: { deployments: 10, compute_hours: 10, storage: 5 } })).statusCode, 200)
    // listed in reverse order: storage, compute_hours and deployments are all over; deployments is first
    const res = await post(u.headers, '/api/usage/consume', { metrics: { storage: 1, compute_hours: 1, api_calls: 1, deployments: 1 } })
    t.equal(res.statusCode, 429)
    t.has(res.json(), { detail: spec('deployments', 10, 10) })
    t.equal(res.headers['retry-after'], '3600')
    t.equal(res.headers['ratelimit-limit'], '10', 'headline fields are the denied metric')
    const policy = res.headers['ratelimit-policy'] as string
    for (const m of ['deployments', 'api_calls', 'compute_hours', 'storage']) t.match(policy, `"${m}";q=`)

    const res2 = await post(u.headers, '/api/usage/consume', { metrics: { storage: 1, compute_hours: 1, api_calls: 1 } })
    t.equal(res2.statusCode, 429)
    t.has(res2.json(), { detail: spec('compute_hours', 10, 10) })
    t.equal(res2.headers['retry-after'], '3600')

    const res3 = await post(u.headers, '/api/usage/consume', { metrics: { storage: 1, api_calls: 1 } })
    t.equal(res3.statusCode, 429)
    t.has(res3.json(), { detail: spec('storage', 5, 5, 'Storage limit exceeded') })
    t.notOk('retry-after' in res3.headers)

    // all or none: api_calls was not counted by any of the denials
    const status = await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
    t.equal(status.json().metrics.api_calls.current, 0)
  })

  await t.test('unlimited tier: success without RateLimit headers, never a 429', async (t) => {
    const u = h.user()
    const adm = h.admin()
    await app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
    const tier = await app.inject({ method: 'PUT', url: `/api/usage/admin/users/${u.id}/tier`, headers: adm.headers, payload: { tier: 'enterprise' } })
    t.equal(tier.statusCode, 200)
    const res = await post(u.headers, '/api/usage/consume', { metric: 'deployments', amount: 1000 })
    t.equal(res.statusCode, 200)
    t.notOk('ratelimit-limit' in res.headers)
  })
})


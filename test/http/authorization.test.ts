/**
 * Invariant 8 (least privilege) and the admin routes of DESIGN 1.8: a user sees and spends only
 * their own quota, admin routes need admin (403 for a user, 401 without a token), and for an
 * admin they do what the contract says.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'

type Headers = Record<string, string>

function client(h: TestApp) {
  return {
    get: (url: string, headers: Headers) => h.app.inject({ method: 'GET', url, headers }),
    post: (url: string, headers: Headers, payload?: object) => h.app.inject({ method: 'POST', url, headers, ...(payload ? { payload } : {}) }),
    put: (url: string, headers: Headers, payload: object) => h.app.inject({ method: 'PUT', url, headers, payload }),
    async usage(headers: Headers): Promise<Record<string, number>> {
      const res = await h.app.inject({ method: 'GET', url: '/api/usage/status', headers })
      return Object.fromEntries(Object.entries(res.json().metrics as Record<string, { current: number }>).map(([m, s]) => [m, s.current]))
    },
  }
}

t.test('a user on the admin routes: 403, and nothing changes', async (t) => {
  const h = await buildTestApp(t)
  const c = client(h)
  const u = h.user()
  const other = h.user()
  const a = h.admin()
  t.equal((await c.post('/api/deploy', u.headers)).statusCode, 201)
  t.equal((await c.post('/api/deploy', other.headers)).statusCode, 201)
  const limitsBefore = (await c.get('/api/usage/admin/limits', a.headers)).json()

  const routes: [string, string, object | undefined][] = [
    ['POST', '/api/usage/admin/manual-reset', undefined],
    ['POST', '/api/usage/admin/manual-reset', { user_id: u.id }],
    ['GET', `/api/usage/admin/users/${other.id}/status`, undefined],
    ['GET', `/api/usage/admin/users/${u.id}/status`, undefined],
    ['PUT', `/api/usage/admin/users/${u.id}/tier`, { tier: 'enterprise' }],
    ['GET', '/api/usage/admin/limits', undefined],
    ['PUT', '/api/usage/admin/limits/free', { max_deployments_per_day: null }],
  ]
  for (const [method, url, payload] of routes) {
    const asUser = await h.app.inject({ method: method as 'GET', url, headers: u.headers, ...(payload ? { payload } : {}) })
    t.equal(asUser.statusCode, 403, `user: ${method} ${url}`)
    t.same(asUser.json(), { detail: { error: 'Forbidden', message: 'This route requires an admin token' } })
    const anonymous = await h.app.inject({ method: method as 'GET', url, ...(payload ? { payload } : {}) })
    t.equal(anonymous.statusCode, 401, `no token: ${method} ${url}`)
    t.equal(anonymous.json().detail.error, 'Unauthorized')
    // a role claim that is not admin is a user
    const notAdmin = h.user({ role: 'administrator', roles: ['user', 'Admin'] })
    const fake = await h.app.inject({ method: method as 'GET', url, headers: notAdmin.headers, ...(payload ? { payload } : {}) })
    t.equal(fake.statusCode, 403, `role "administrator" / roles ["Admin"]: ${method} ${url}`)
  }
  t.same(await c.usage(u.headers), { deployments: 1, api_calls: 0, compute_hours: 0, storage: 0 }, 'no reset happened')
  t.same(await c.usage(other.headers), { deployments: 1, api_calls: 0, compute_hours: 0, storage: 0 })
  t.equal((await h.db.pool.query('SELECT tier FROM users WHERE id = $1', [u.id])).rows[0]?.tier, 'free', 'tier unchanged')
  t.same((await c.get('/api/usage/admin/limits', a.headers)).json(), limitsBefore, 'limits unchanged')
})

t.test('user routes need a token', async (t) => {
  const h = await buildTestApp(t)
  for (const [method, url] of [['GET', '/api/usage/status'], ['POST', '/api/usage/check-limit'], ['POST', '/api/usage/consume'], ['POST', '/api/usage/increment'], ['POST', '/api/deploy']] as const) {
    const res = await h.app.inject({ method, url, ...(method === 'POST' ? { payload: { metric: 'deployments', amount: 1 } } : {}) })
    t.equal(res.statusCode, 401, `${method} ${url}`)
    t.equal(res.headers['www-authenticate'], 'Bearer')
  }
})

t.test("no route lets a user name another user's id", async (t) => {
  const h = await buildTestApp(t)
  const c = client(h)
  const attacker = h.user()
  const victim = h.user()
  t.equal((await c.post('/api/usage/consume', victim.headers, { metric: 'api_calls', amount: 3 })).statusCode, 200)

  for (const [url, payload] of [
    ['/api/usage/consume', { metric: 'api_calls', amount: 1, user_id: victim.id }],
    ['/api/usage/consume', { metrics: { api_calls: 1 }, user_id: victim.id }],
    ['/api/usage/increment', { metric: 'api_calls', amount: 1, user_id: victim.id }],
    ['/api/usage/check-limit', { metric: 'api_calls', amount: 1, user_id: victim.id }],
    ['/api/usage/consume', { metric: 'api_calls', amount: 1, userId: victim.id }],
    ['/api/usage/consume', { metric: 'api_calls', amount: 1, sub: victim.id }],
  ] as const) {
    const res = await c.post(url, attacker.headers, payload)
    t.equal(res.statusCode, 400, `${url} ${Object.keys(payload).join(',')}`)
    t.match(res.json().detail.message, /is not an accepted property$/)
  }
  // status is always the token's user, whatever the query string says
  for (const url of [`/api/usage/status?user_id=${victim.id}`, `/api/usage/status?id=${victim.id}&user=${victim.id}`]) {
    const res = await c.get(url, attacker.headers)
    t.equal(res.statusCode, 200)
    t.equal(res.json().user_id, attacker.id)
    t.equal(res.json().metrics.api_calls.current, 0)
  }
  // an unauthenticated guarded route cannot charge anybody either
  t.same(await c.usage(victim.headers), { deployments: 0, api_calls: 3, compute_hours: 0, storage: 0 }, "the victim's usage is untouched")
  t.same(await c.usage(attacker.headers), { deployments: 0, api_calls: 0, compute_hours: 0, storage: 0 })
})

t.test('admin: any user status; 404 for an unknown user', async (t) => {
  const h = await buildTestApp(t)
  const c = client(h)
  const u = h.user()
  const a = h.admin()
  t.equal((await c.post('/api/usage/consume', u.headers, { metrics: { deployments: 2, compute_hours: 0.75 } })).statusCode, 200)
  const res = await c.get(`/api/usage/admin/users/${u.id}/status`, a.headers)
  t.equal(res.statusCode, 200)
  t.same(res.json(), (await c.get('/api/usage/status', u.headers)).json(), "the same answer as the user's own status")
  t.equal(res.json().user_id, u.id)
  t.equal(res.json().metrics.compute_hours.current, 0.75)

  const unknown = randomUUID()
  const missing = await c.get(`/api/usage/admin/users/${unknown}/status`, a.headers)
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().detail.error, 'Not found')
  t.match(missing.json().detail.message, unknown)
  t.equal((await h.db.pool.query('SELECT 1 FROM users WHERE id = $1', [unknown])).rowCount, 0, 'looking does not create the user')

  // an admin via the `roles` claim
  const viaRoles = h.user({ roles: ['user', 'admin'] })
  t.equal((await c.get(`/api/usage/admin/users/${u.id}/status`, viaRoles.headers)).statusCode, 200)
})

t.test('admin: a tier change applies to the next decision', async (t) => {
  const h = await buildTestApp(t)
  const c = client(h)
  const u = h.user({ username: 'tier-change' })
  const a = h.admin()
  for (let i = 0; i < 10; i++) t.equal((await c.post('/api/deploy', u.headers)).statusCode, 201)
  t.equal((await c.post('/api/deploy', u.headers)).statusCode, 429, 'free: 10 a day')

  const pro = await c.put(`/api/usage/admin/users/${u.id}/tier`, a.headers, { tier: 'pro' })
  t.equal(pro.statusCode, 200)
  t.same(pro.json(), { user_id: u.id, username: 'tier-change', tier: 'pro' })
  const next = await c.post('/api/deploy', u.headers)
  t.equal(next.statusCode, 201, 'the very next request sees pro')
  t.equal(next.headers['ratelimit-limit'], '50')
  const status = (await c.get('/api/usage/status', u.headers)).json()
  t.equal(status.tier, 'pro')
  t.same(status.metrics.deployments, { current: 11, limit: 50, remaining: 39, unit: 'count', period: 'day', reserved: 0 })
  t.equal((await h.db.pool.query('SELECT tier FROM users WHERE id = $1', [u.id])).rows[0]?.tier, 'pro', 'in Postgres')

  // back to free: over the limit again, counters kept
  t.equal((await c.put(`/api/usage/admin/users/${u.id.toUpperCase()}/tier`, a.headers, { tier: 'free' })).statusCode, 200, 'any case of the id')
  const denied = await c.post('/api/deploy', u.headers)
  t.equal(denied.statusCode, 429)
  t.match(denied.json(), { detail: { current: 11, limit: 10, tier: 'free', metric: 'deployments' } })

  const ent = await c.put(`/api/usage/admin/users/${u.id}/tier`, a.headers, { tier: 'enterprise' })
  t.equal(ent.statusCode, 200)
  const unlimited = (await c.post('/api/usage/check-limit', u.headers, { metric: 'deployments', amount: 1000 })).json()
  t.match(unlimited, { allowed: true, limit: null, remaining: null, tier: 'enterprise' })

  const nobody = await c.put(`/api/usage/admin/users/${randomUUID()}/tier`, a.headers, { tier: 'pro' })
  t.equal(nobody.statusCode, 404, 'unknown user')
  t.equal(nobody.json().detail.error, 'Not found')
})

t.test('admin: limits GET and PUT (partial; null = unlimited)', async (t) => {
  const h = await buildTestApp(t)
  const c = client(h)
  const u = h.user()
  const a = h.admin()
  const list = await c.get('/api/usage/admin/limits', a.headers)
  t.equal(list.statusCode, 200)
  t.same(list.json(), {
    tiers: [
      { tier: 'enterprise', max_deployments_per_day: null, max_api_calls_per_day: null, max_compute_hours_per_day: null, max_storage_gb: null },
      { tier: 'free', max_deployments_per_day: 10, max_api_calls_per_day: 5000, max_compute_hours_per_day: 10, max_storage_gb: 5 },
      { tier: 'pro', max_deployments_per_day: 50, max_api_calls_per_day: 50000, max_compute_hours_per_day: 100, max_storage_gb: 100 },
    ],
  })

  const partial = await c.put('/api/usage/admin/limits/free', a.headers, { max_deployments_per_day: 3, max_compute_hours_per_day: 2.5 })
  t.equal(partial.statusCode, 200)
  t.same(partial.json(), { tier: 'free', max_deployments_per_day: 3, max_api_calls_per_day: 5000, max_compute_hours_per_day: 2.5, max_storage_gb: 5 }, 'absent = unchanged')
  const row = (await h.db.pool.query('SELECT max_deployments_per_day, max_compute_hours_per_day = 2.5 AS ch, max_storage_gb = 5 AS s FROM usage_limits WHERE tier = $1', ['free'])).rows[0]
  t.same(row, { max_deployments_per_day: 3, ch: true, s: true }, 'in Postgres')
  for (let i = 0; i < 3; i++) t.equal((await c.post('/api/deploy', u.headers)).statusCode, 201)
  t.equal((await c.post('/api/deploy', u.headers)).statusCode, 429, 'the new limit applies at once')
  t.equal((await c.post('/api/usage/consume', u.headers, { metric: 'compute_hours', amount: 2.6 })).statusCode, 429)

  const unlimited = await c.put('/api/usage/admin/limits/free', a.headers, { max_deployments_per_day: null })
  t.equal(unlimited.statusCode, 200)
  t.equal(unlimited.json().max_deployments_per_day, null)
  t.equal(unlimited.json().max_compute_hours_per_day, 2.5, 'still the earlier change')
  const status = (await c.get('/api/usage/status', u.headers)).json()
  t.same(status.metrics.deployments, { current: 3, limit: null, remaining: null, unit: 'count', period: 'day', reserved: 0 })
  const deploy = await c.post('/api/deploy', u.headers)
  t.equal(deploy.statusCode, 201, 'null = unlimited')
  t.notOk('ratelimit-limit' in deploy.headers, 'no RateLimit fields for an unlimited metric')

  const back = await c.put('/api/usage/admin/limits/free', a.headers, { max_deployments_per_day: 10, max_compute_hours_per_day: 10 })
  t.equal(back.statusCode, 200)
  t.same((await c.get('/api/usage/admin/limits', a.headers)).json().tiers[1], list.json().tiers[1], 'restored')
})

t.test('admin: manual reset of one user, one metric, everyone', async (t) => {
  const h = await buildTestApp(t)
  const c = client(h)
  const a = h.admin()
  const [u1, u2, u3] = [h.user(), h.user(), h.user()]
  const fill = async (headers: Headers) => {
    t.equal((await c.post('/api/usage/consume', headers, { metrics: { deployments: 4, api_calls: 40, compute_hours: 4.5 } })).statusCode, 200)
    t.equal((await c.post('/api/usage/increment', headers, { metric: 'storage', amount: 1.5 })).statusCode, 200)
  }
  for (const u of [u1, u2, u3]) await fill(u.headers)
  const full = { deployments: 4, api_calls: 40, compute_hours: 4.5, storage: 1.5 }

  const one = await c.post('/api/usage/admin/manual-reset', a.headers, { user_id: u1.id })
  t.equal(one.statusCode, 200)
  t.match(one.json(), { user_id: u1.id, metrics: ['deployments', 'api_calls', 'compute_hours'], users_reset: 1 })
  t.same(await c.usage(u1.headers), { deployments: 0, api_calls: 0, compute_hours: 0, storage: 1.5 }, 'one user: daily metrics zeroed, the gauge kept')
  t.same(await c.usage(u2.headers), full, 'the others untouched')

  const metric = await c.post('/api/usage/admin/manual-reset', a.headers, { user_id: u2.id.toUpperCase(), metric: 'api_calls' })
  t.equal(metric.statusCode, 200)
  t.match(metric.json(), { user_id: u2.id, metrics: ['api_calls'], users_reset: 1 })
  t.same(await c.usage(u2.headers), { ...full, api_calls: 0 }, 'one metric of one user')

  const storage = await c.post('/api/usage/admin/manual-reset', a.headers, { user_id: u2.id, metric: 'storage' })
  t.equal(storage.statusCode, 200)
  t.same(await c.usage(u2.headers), { ...full, api_calls: 0, storage: 0 }, 'the gauge only when named')

  const everyone = await c.post('/api/usage/admin/manual-reset', a.headers)
  t.equal(everyone.statusCode, 200)
  t.match(everyone.json(), { user_id: null, metrics: ['deployments', 'api_calls', 'compute_hours'] })
  t.ok(everyone.json().users_reset >= 3, `users_reset ${everyone.json().users_reset}`)
  for (const u of [u1, u2, u3]) {
    const left = await c.usage(u.headers)
    t.same({ ...left, storage: 0 }, { deployments: 0, api_calls: 0, compute_hours: 0, storage: 0 }, 'everyone zeroed')
  }
  t.equal((await c.usage(u3.headers)).storage, 1.5)

  const everyoneOneMetric = await c.post('/api/usage/admin/manual-reset', a.headers, { metric: 'storage' })
  t.equal(everyoneOneMetric.statusCode, 200)
  t.equal((await c.usage(u3.headers)).storage, 0, 'one metric of everyone')

  const unknown = await c.post('/api/usage/admin/manual-reset', a.headers, { user_id: randomUUID() })
  t.equal(unknown.statusCode, 404, 'resetting a user that does not exist is a 404 (nothing is created for it)')
})

/**
 * The report endpoints (GET /api/usage/admin/top, near-limits, history): the spec's monitoring
 * queries as JSON. Their answers are compared with the spec's own SQL run on the same rows
 * (CURRENT_DATE replaced by the app clock's day); bad query parameters are 400s, a user's token 403.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'

const TODAY = '2026-11-28'

t.test('report endpoints', async (t) => {
  const { app, db, admin, user } = await buildTestApp(t, { now: `${TODAY}T12:00:00.000Z` })
  const headers = admin().headers
  const ids: Record<string, string> = {}
  const people: [string, string][] = [['alice', 'free'], ['bob', 'free'], ['carol', 'pro'], ['dave', 'enterprise'], ['erin', 'free']]
  for (const [name, tier] of people) {
    ids[name] = randomUUID()
    await db.pool.query('INSERT INTO users (id, username, tier) VALUES ($1, $2, $3)', [ids[name], name, tier])
  }
  // [who, day, deployments, api_calls, compute_hours, storage_gb]
  const rows: [string, string, number, number, string, string][] = [
    ['alice', TODAY, 9, 100, '0.1', '1.25'], // deployments 9 > 0.8 x 10
    ['bob', TODAY, 2, 4500, '0', '0'], // api_calls 4500 > 0.8 x 5000
    ['carol', TODAY, 10, 30000, '1.5', '2'], // pro: far from its limits
    ['dave', TODAY, 500, 900000, '99', '0'], // enterprise: unlimited, never near
    ['erin', TODAY, 8, 4000, '0', '0'], // exactly 0.8 x the limit: not over it
    ['alice', '2026-11-27', 3, 40, '0.25', '1'],
    ['bob', '2026-11-27', 1, 10, '0', '0'],
    ['alice', '2026-11-21', 1, 1, '0', '0'], // 7 days ago: in the spec's window
    ['alice', '2026-11-20', 1, 1, '0', '0'], // 8 days ago: out of it
  ]
  for (const [who, day, d, a, c, s] of rows) {
    await db.pool.query(
      'INSERT INTO daily_usage (user_id, date, deployments_created, api_calls, compute_hours, storage_gb) VALUES ($1, $2, $3, $4, $5, $6)',
      [ids[who], day, d, a, c, s],
    )
  }
  const get = (url: string, h: Record<string, string> = headers) => app.inject({ url, headers: h })

  await t.test("top: the spec's Today's Top Users", async (t) => {
    const res = await get('/api/usage/admin/top')
    t.equal(res.statusCode, 200)
    const body = res.json()
    const spec = await db.pool.query(`SELECT u.username, du.deployments_created, du.api_calls
      FROM daily_usage du JOIN users u ON du.user_id = u.id
      WHERE du.date = $1::date ORDER BY du.api_calls DESC LIMIT 10`, [TODAY])
    t.equal(body.date, TODAY)
    t.equal(body.metric, 'api_calls')
    t.same(body.users.map((u: { username: string; deployments_created: number; api_calls: number }) =>
      ({ username: u.username, deployments_created: u.deployments_created, api_calls: u.api_calls })),
    spec.rows.map((r) => ({ username: r.username, deployments_created: Number(r.deployments_created), api_calls: Number(r.api_calls) })))
    t.match(body.users[4], { username: 'alice', tier: 'free', compute_hours: 0.1, storage_gb: 1.25, user_id: ids.alice }, 'exact numbers')

    const byDeploys = (await get('/api/usage/admin/top?metric=deployments&limit=2')).json()
    t.same(byDeploys.users.map((u: { username: string }) => u.username), ['dave', 'carol'])
    const yesterday = (await get('/api/usage/admin/top?date=2026-11-27')).json()
    t.same(yesterday.users.map((u: { username: string }) => u.username), ['alice', 'bob'])
    t.same((await get('/api/usage/admin/top?date=2020-01-01')).json().users, [], 'a day without rows')
  })

  await t.test("near-limits: the spec's Users Near Limits", async (t) => {
    const res = await get('/api/usage/admin/near-limits')
    t.equal(res.statusCode, 200)
    const body = res.json()
    const spec = await db.pool.query(`SELECT u.username, u.tier
      FROM daily_usage du JOIN users u ON du.user_id = u.id JOIN usage_limits ul ON u.tier = ul.tier
      WHERE du.date = $1::date
        AND (du.deployments_created > ul.max_deployments_per_day * 0.8
          OR du.api_calls > ul.max_api_calls_per_day * 0.8)
      ORDER BY u.username`, [TODAY])
    t.same(body.users.map((u: { username: string }) => u.username), spec.rows.map((r) => r.username))
    t.same(body.users.map((u: { username: string }) => u.username), ['alice', 'bob'])
    t.equal(body.threshold, 0.8)
    const alice = body.users[0]
    t.same(alice.metrics.deployments, { current: 9, limit: 10, ratio: 0.9, near: true })
    t.same(alice.metrics.api_calls, { current: 100, limit: 5000, ratio: 0.02, near: false })
    t.same(alice.metrics.storage, { current: 1.25, limit: 5, ratio: 0.25, near: false })

    const all = (await get('/api/usage/admin/near-limits?threshold=0.0001')).json()
    t.notOk(all.users.some((u: { username: string }) => u.username === 'dave'), 'an unlimited tier is never near a limit')
    const over = (await get('/api/usage/admin/near-limits?threshold=1')).json()
    t.same(over.users, [], 'nobody over the limit itself')
    const exact = (await get('/api/usage/admin/near-limits?threshold=0.7')).json()
    t.ok(exact.users.some((u: { username: string; metrics: { deployments: { near: boolean } } }) => u.username === 'erin' && u.metrics.deployments.near),
      '8 > 10 x 0.7, compared exactly')
  })

  await t.test("history: the spec's Historical Usage", async (t) => {
    const res = await get('/api/usage/admin/history')
    t.equal(res.statusCode, 200)
    const body = res.json()
    const spec = await db.pool.query(`SELECT date, COUNT(*) as active_users,
        SUM(deployments_created) as total_deployments, SUM(api_calls) as total_api_calls
      FROM daily_usage WHERE date >= $1::date - INTERVAL '7 days'
      GROUP BY date ORDER BY date DESC`, [TODAY])
    t.same(body.days.map((d: { date: string; active_users: number; total_deployments: number; total_api_calls: number }) =>
      [d.date, d.active_users, d.total_deployments, d.total_api_calls]),
    spec.rows.map((r) => [r.date.toISOString ? r.date.toISOString().slice(0, 10) : r.date, Number(r.active_users), Number(r.total_deployments), Number(r.total_api_calls)]))
    t.equal(body.from, '2026-11-21')
    t.equal(body.to, TODAY)
    t.same(body.days[0], {
      date: TODAY, active_users: 5, total_deployments: 529, total_api_calls: 938600, total_compute_hours: 100.6, total_storage_gb: 3.25,
    })
    const one = (await get(`/api/usage/admin/history?days=1&user_id=${ids.alice}`)).json()
    t.equal(one.user_id, ids.alice)
    t.same(one.days.map((d: { date: string; total_deployments: number }) => [d.date, d.total_deployments]), [[TODAY, 9], ['2026-11-27', 3]])
  })

  await t.test('validation: 400 with the field named', async (t) => {
    for (const url of [
      '/api/usage/admin/top?metric=bogus',
      '/api/usage/admin/top?limit=0',
      '/api/usage/admin/top?limit=1001',
      '/api/usage/admin/top?limit=-1',
      '/api/usage/admin/top?date=2026-02-30',
      '/api/usage/admin/top?date=yesterday',
      '/api/usage/admin/top?extra=1',
      '/api/usage/admin/near-limits?threshold=0',
      '/api/usage/admin/near-limits?threshold=abc',
      '/api/usage/admin/near-limits?threshold=11',
      '/api/usage/admin/history?days=0',
      '/api/usage/admin/history?days=400',
      '/api/usage/admin/history?user_id=not-a-uuid',
    ]) {
      const res = await get(url)
      t.equal(res.statusCode, 400, url)
      t.type(res.json().detail?.message, 'string', `${url}: the error envelope`)
    }
  })

  await t.test('a user token is refused (403), no token is 401', async (t) => {
    for (const path of ['top', 'near-limits', 'history']) {
      t.equal((await get(`/api/usage/admin/${path}`, user().headers)).statusCode, 403)
      t.equal((await get(`/api/usage/admin/${path}`, {})).statusCode, 401)
    }
  })
})

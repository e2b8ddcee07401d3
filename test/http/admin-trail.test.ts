/**
 * Issue 11, "admin actions leave no trail": every admin action (manual reset, tier change, limit
 * edit) is recorded in admin_audit with its actor and outcome, whatever the outcome; a reset of an
 * unknown user answers 404 and creates nothing in Redis; a JSON body of `null` no longer means
 * "everyone" (400), while the spec's body-less reset still does.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { Redis } from 'ioredis'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'
import { TEST_REDIS_URL, closeRedis } from '../helpers/redis.ts'

interface AuditRow {
  actor: string | null
  action: string
  target: Record<string, unknown>
  outcome: string
  detail: Record<string, unknown> | null
  recent: boolean
}

async function auditRows(h: TestApp): Promise<AuditRow[]> {
  const { rows } = await h.db.pool.query<AuditRow>(
    `SELECT actor::text, action, target, outcome, detail, at > now() - interval '1 minute' AS recent
       FROM admin_audit ORDER BY id`,
  )
  return rows
}

/** Keys under the test's prefix that name `userId`. */
async function keysOf(h: TestApp, userId: string): Promise<string[]> {
  const redis = new Redis(TEST_REDIS_URL)
  redis.on('error', () => {})
  try {
    const found: string[] = []
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${h.prefix}*${userId}*`, 'COUNT', 1000)
      cursor = next
      found.push(...keys)
    } while (cursor !== '0')
    return found
  } finally {
    await closeRedis(redis)
  }
}

async function usageOf(h: TestApp, headers: Record<string, string>): Promise<Record<string, number>> {
  const res = await h.app.inject({ method: 'GET', url: '/api/usage/status', headers })
  return Object.fromEntries(Object.entries(res.json().metrics as Record<string, { current: number }>).map(([m, s]) => [m, s.current]))
}

t.test('every admin action is recorded in admin_audit with its actor and outcome', async (t) => {
  const h = await buildTestApp(t)
  const a = h.admin()
  const u = h.user()
  t.equal((await h.app.inject({ method: 'POST', url: '/api/deploy', headers: u.headers })).statusCode, 201)

  const post = (payload?: unknown) => h.app.inject({
    method: 'POST', url: '/api/usage/admin/manual-reset', headers: a.headers, ...(payload === undefined ? {} : { payload: payload as object }),
  })
  t.equal((await post({ user_id: u.id, metric: 'deployments' })).statusCode, 200)
  t.equal((await post()).statusCode, 200)
  t.equal((await h.app.inject({ method: 'PUT', url: `/api/usage/admin/users/${u.id}/tier`, headers: a.headers, payload: { tier: 'pro' } })).statusCode, 200)
  const nobody = randomUUID()
  t.equal((await h.app.inject({ method: 'PUT', url: `/api/usage/admin/users/${nobody}/tier`, headers: a.headers, payload: { tier: 'pro' } })).statusCode, 404)
  // An unknown tier in the body fails the action (its status is the error handler's business).
  t.ok((await h.app.inject({ method: 'PUT', url: `/api/usage/admin/users/${u.id}/tier`, headers: a.headers, payload: { tier: 'gold' } })).statusCode >= 400)
  t.equal((await h.app.inject({ method: 'PUT', url: '/api/usage/admin/limits/free', headers: a.headers, payload: { max_deployments_per_day: 12 } })).statusCode, 200)
  t.equal((await h.app.inject({ method: 'PUT', url: '/api/usage/admin/limits/gold', headers: a.headers, payload: { max_deployments_per_day: 1 } })).statusCode, 404)

  const rows = await auditRows(h)
  t.ok(rows.every((r) => r.actor === a.id && r.recent), 'every row names the admin, with a timestamp')
  t.same(rows.map((r) => [r.action, r.outcome, r.target]), [
    ['manual-reset', 'ok', { user_id: u.id, metric: 'deployments', date: '2026-11-28' }],
    ['manual-reset', 'ok', { user_id: null, metric: null, date: '2026-11-28' }],
    ['set-tier', 'ok', { user_id: u.id, tier: 'pro' }],
    ['set-tier', 'not-found', { user_id: nobody, tier: 'pro' }],
    ['set-tier', 'error', { user_id: u.id, tier: 'gold' }],
    ['update-limits', 'ok', { tier: 'free' }],
    ['update-limits', 'not-found', { tier: 'gold' }],
  ])
  t.match(rows[0]?.detail, { users_reset: 1, users_failed_count: 0, persisted: true }, 'a reset records its summary')
  t.match(rows[4]?.detail, { error: String }, 'a failure records its reason')
  t.same(rows[5]?.detail, { limits: { max_deployments_per_day: 12 }, events_rearmed: 0 }, 'a limit edit records the new values (and the threshold events it re-armed)')

  // A user's token cannot act, and leaves no row (the request is refused before any action).
  t.equal((await h.app.inject({ method: 'POST', url: '/api/usage/admin/manual-reset', headers: u.headers })).statusCode, 403)
  t.equal((await auditRows(h)).length, rows.length)
})

t.test('manual-reset of an unknown user: 404, nothing created in Redis, recorded as not-found', async (t) => {
  const h = await buildTestApp(t)
  const a = h.admin()
  const unknown = randomUUID()
  const res = await h.app.inject({ method: 'POST', url: '/api/usage/admin/manual-reset', headers: a.headers, payload: { user_id: unknown.toUpperCase() } })
  t.equal(res.statusCode, 404)
  t.same(res.json(), { detail: { error: 'Not found', message: `No user ${unknown}` } })
  t.same(await keysOf(h, unknown), [], 'no Redis key for the unknown user')
  t.equal((await h.db.pool.query('SELECT 1 FROM users WHERE id = $1', [unknown])).rowCount, 0, 'no user created')
  t.equal((await h.db.pool.query('SELECT 1 FROM daily_usage WHERE user_id = $1', [unknown])).rowCount, 0, 'no usage row')
  t.same((await auditRows(h)).map((r) => [r.action, r.outcome, r.target.user_id]), [['manual-reset', 'not-found', unknown]])
})

t.test('manual-reset with a JSON body of null: 400 and nothing reset; no body still resets everyone', async (t) => {
  const h = await buildTestApp(t)
  const a = h.admin()
  const u = h.user()
  t.equal((await h.app.inject({ method: 'POST', url: '/api/deploy', headers: u.headers })).statusCode, 201)

  const nullBody = await h.app.inject({
    method: 'POST', url: '/api/usage/admin/manual-reset', headers: { ...a.headers, 'content-type': 'application/json' }, payload: 'null',
  })
  t.equal(nullBody.statusCode, 400)
  t.same(nullBody.json(), { detail: { error: 'Invalid request', message: 'body must be an object; send no body to reset everyone', field: 'body' } })
  t.equal((await usageOf(h, u.headers)).deployments, 1, 'nothing was reset')
  t.same(await auditRows(h), [], 'a refused request is no action')

  // The spec's curl: POST with the token and nothing else.
  const bodyless = await h.app.inject({ method: 'POST', url: '/api/usage/admin/manual-reset', headers: a.headers })
  t.equal(bodyless.statusCode, 200)
  t.match(bodyless.json(), { user_id: null, users_reset: 1, complete: true, users_failed: [], users_failed_count: 0, persisted: true })
  t.equal((await usageOf(h, u.headers)).deployments, 0, 'everyone reset')
  const emptyObject = await h.app.inject({ method: 'POST', url: '/api/usage/admin/manual-reset', headers: a.headers, payload: {} })
  t.equal(emptyObject.statusCode, 200, '{} is everyone too')
})

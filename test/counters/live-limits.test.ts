/**
 * DESIGN.md 1.6: a change to users.tier or usage_limits — by plain SQL, as an operator in psql
 * would — applies to the next decision within 1 second, without a restart, also when the LISTEN
 * connection was lost while the change was made. Enterprise (NULL limits) is never denied but
 * still counted.
 */
import t from 'tap'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { insertUser, pollUntil, todayNoon } from './fixtures.ts'

const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })
/** The operator's connection: a plain pg.Pool on the test database, not the service's pool. */
const sql = h.db.pool

t.test('a tier changed by plain SQL applies within 1 s', async (t) => {
  const user = newUserId()
  for (let i = 0; i < 10; i++) await h.service.consume(user, { deployments: 1 })
  t.match(await h.service.consume(user, { deployments: 1 }), { allowed: false, tier: 'free' }, 'free: 10 is the limit (tier now cached)')

  await sql.query(`UPDATE users SET tier = 'pro' WHERE id = $1`, [user])
  const ms = await pollUntil(async () => (await h.service.checkLimit(user, 'deployments', 1)).tier === 'pro', 1000, 'tier change')
  t.ok(ms <= 1000, `seen after ${ms} ms`)
  t.match(await h.service.consume(user, { deployments: 1 }), { allowed: true, tier: 'pro', metrics: { deployments: { current: 11, limit: 50 } } })

  await sql.query(`UPDATE users SET tier = 'free' WHERE id = $1`, [user])
  await pollUntil(async () => (await h.service.checkLimit(user, 'deployments', 1)).tier === 'free', 1000, 'tier change back')
  t.match(await h.service.consume(user, { deployments: 1 }), { allowed: false, tier: 'free' }, 'and back down: denied again')
})

t.test('a limit changed by plain SQL applies within 1 s', async (t) => {
  const user = newUserId()
  await h.service.consume(user, { deployments: 2 })
  t.teardown(async () => {
    await sql.query(`UPDATE usage_limits SET max_deployments_per_day = 10 WHERE tier = 'free'`)
    await pollUntil(async () => h.limits.tierLimits('free')?.deployments === 10_000_000, 2000, 'limit restored')
  })

  await sql.query(`UPDATE usage_limits SET max_deployments_per_day = 3 WHERE tier = 'free'`)
  const ms = await pollUntil(async () => (await h.service.checkLimit(user, 'deployments', 1)).limit === 3, 1000, 'limit change')
  t.ok(ms <= 1000, `seen after ${ms} ms`)
  t.match(await h.service.consume(user, { deployments: 1 }), { allowed: true, metrics: { deployments: { current: 3, limit: 3, remaining: 0 } } })
  t.match(await h.service.consume(user, { deployments: 1 }), { allowed: false, deniedMetric: 'deployments' }, 'the 4th is denied')
  t.match(await h.service.consume(newUserId(), { deployments: 4 }), { allowed: false }, 'for every free user')

  // NULL = unlimited, also by plain SQL.
  await sql.query(`UPDATE usage_limits SET max_deployments_per_day = NULL WHERE tier = 'free'`)
  await pollUntil(async () => (await h.service.checkLimit(user, 'deployments', 1)).limit === null, 1000, 'limit removed')
  t.match(await h.service.consume(user, { deployments: 100 }), { allowed: true, metrics: { deployments: { current: 103, limit: null, remaining: null } } })
})

t.test('enterprise users are never denied but still counted', async (t) => {
  const user = newUserId()
  await insertUser(sql, user, 'enterprise')
  const big = await h.service.consume(user, { deployments: 10_000, api_calls: 1e9, compute_hours: 1e9, storage: 1e9 })
  t.match(big, { allowed: true, tier: 'enterprise', metrics: { deployments: { current: 10_000, limit: null, remaining: null } } })
  const many = await Promise.all(Array.from({ length: 300 }, () => h.service.consume(user, { deployments: 100, compute_hours: 0.5 })))
  t.equal(many.filter((r) => r.allowed).length, 300, 'all 300 allowed')
  const check = await h.service.checkLimit(user, 'deployments', 1e9)
  t.match(check, { allowed: true, limit: null, remaining: null })
  const status = await h.service.status(user)
  t.equal(status.tier, 'enterprise')
  t.match(status.metrics.deployments, { current: 40_000, limit: null, remaining: null })
  t.equal(status.metrics.api_calls.current, 1e9)
  t.equal(status.metrics.compute_hours.current, 1e9 + 150)
  t.equal(status.metrics.storage.current, 1e9)
})

t.test('a tier changed while the LISTEN connection was down applies within 1 s of reconnecting', async (t) => {
  const user = newUserId()
  const other = newUserId()
  for (let i = 0; i < 10; i++) await h.service.consume(user, { deployments: 1 })
  await h.service.consume(other, { api_calls: 10 })
  t.match(await h.service.checkLimit(user, 'deployments', 1), { allowed: false, tier: 'free' }, 'tier cached as free')
  t.equal(h.limits.listening, true)
  t.teardown(async () => {
    await sql.query(`UPDATE usage_limits SET max_api_calls_per_day = 5000 WHERE tier = 'free'`)
    await pollUntil(async () => h.limits.tierLimits('free')?.api_calls === 5_000_000_000, 2000, 'limit restored')
  })

  const killed = await sql.query<{ killed: boolean }>(
    `SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity
      WHERE datname = current_database() AND query ILIKE 'LISTEN%'`,
  )
  t.same(killed.rows, [{ killed: true }], 'the one LISTEN connection was terminated')
  await pollUntil(async () => !h.limits.listening, 1000, 'the cache notices the lost connection', 1)

  // Changes made in the gap: their NOTIFYs reach nobody.
  await sql.query(`UPDATE users SET tier = 'pro' WHERE id = $1`, [user])
  await sql.query(`UPDATE usage_limits SET max_api_calls_per_day = 12 WHERE tier = 'free'`)
  t.equal(h.limits.listening, false, 'both changes were made while not listening')
  t.match(await h.service.checkLimit(user, 'deployments', 1), { allowed: false, tier: 'free' },
    'during the gap the cached tier is stale (so the check below is meaningful)')

  await pollUntil(async () => h.limits.listening, 5000, 'LISTEN reconnected', 1)
  const ms = await pollUntil(async () => {
    const [tier, limit] = await Promise.all([h.service.checkLimit(user, 'deployments', 1), h.service.checkLimit(other, 'api_calls', 1)])
    return tier.tier === 'pro' && tier.allowed && limit.limit === 12
  }, 1000, 'changes made during the gap')
  t.ok(ms <= 1000, `applied ${ms} ms after reconnecting`)
  t.match(await h.service.consume(other, { api_calls: 3 }), { allowed: false, deniedMetric: 'api_calls' }, '10 + 3 > 12')

  // And NOTIFY works again on the new connection.
  await sql.query(`UPDATE users SET tier = 'enterprise' WHERE id = $1`, [user])
  await pollUntil(async () => (await h.service.checkLimit(user, 'deployments', 1)).tier === 'enterprise', 1000, 'change after reconnect')
})

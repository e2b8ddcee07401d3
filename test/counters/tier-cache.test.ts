/**
 * The tier cache under a burst: concurrent first decisions of one user share one Postgres read
 * (after a restart every busy user arrives this way), and a change notified while that read is
 * under way is not hidden by it.
 */
import t from 'tap'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { insertUser, todayNoon } from './fixtures.ts'

const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })

/** Counts the service pool's queries that read or write `users`, while `fn` runs. */
async function usersQueries<T>(fn: () => Promise<T>): Promise<{ result: T; queries: number }> {
  const pool = h.pool as unknown as { query: (...args: unknown[]) => unknown }
  const original = pool.query
  let queries = 0
  pool.query = function (this: unknown, ...args: unknown[]) {
    // A string, or a query config ({ text, values }) as drizzle sends it.
    const query = args[0]
    const text = typeof query === 'string' ? query : String((query as { text?: unknown } | null)?.text ?? '')
    if (/\busers\b/.test(text)) queries++
    return original.apply(this, args)
  }
  try {
    return { result: await fn(), queries }
  } finally {
    pool.query = original
  }
}

t.test('200 concurrent first decisions of a known user cost one users read', async (t) => {
  const user = newUserId()
  await insertUser(h.db.pool, user, 'pro')
  const { result, queries } = await usersQueries(() =>
    Promise.all(Array.from({ length: 200 }, () => h.service.consume(user, { api_calls: 1 }))))
  t.equal(result.filter((r) => r.allowed && r.tier === 'pro').length, 200, 'every decision used the tier read once')
  t.equal(queries, 1, 'one SELECT from users')
  const again = await usersQueries(() => h.service.consume(user, { api_calls: 1 }))
  t.equal(again.queries, 0, 'then the cache answers')
})

t.test('200 concurrent first decisions of a new user provision it once', async (t) => {
  const user = newUserId()
  const { result, queries } = await usersQueries(() =>
    Promise.all(Array.from({ length: 200 }, () => h.service.consume(user, { api_calls: 1 }))))
  t.equal(result.filter((r) => r.allowed && r.tier === 'free').length, 200)
  t.equal(queries, 2, 'one SELECT that finds nothing, one INSERT')
  const { rows } = await h.db.pool.query('SELECT count(*)::int AS n FROM users WHERE id = $1', [user])
  t.equal(rows[0].n, 1)
})

t.test('a tier change during a shared read is not hidden by it', async (t) => {
  const user = newUserId()
  await insertUser(h.db.pool, user, 'free')
  const first = h.limits.userTier(user) // read under way (reads 'free')
  await h.db.pool.query(`UPDATE users SET tier = 'pro' WHERE id = $1`, [user])
  h.limits.invalidateUser(user) // what the NOTIFY does, made synchronous here
  const second = h.limits.userTier(user)
  t.equal(await second, 'pro', 'a caller after the change does not share the earlier read')
  t.ok(['free', 'pro'].includes(await first), 'the caller before it gets what its read saw')
  t.equal(await h.limits.userTier(user), 'pro', 'and the earlier read was not cached over the change')
})

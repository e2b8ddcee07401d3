/**
 * Issue 11, "the global manual reset is not atomic across its steps": a reset that failed part-way
 * left Redis zeroed for some users and daily_usage for none. Now each user is reset on its own —
 * one failure does not stop the others, the summary says what is left (`complete: false`,
 * `users_failed`, `persisted`), and the same reset again finishes the job — and Redis and
 * daily_usage agree afterwards, even when a spend is flushed between a user's reset and the
 * Postgres step.
 */
import t from 'tap'
import type { Test } from 'tap'
import { CounterUnavailableError } from '../../src/counters/store.ts'
import type { CounterStore } from '../../src/counters/store.ts'
import { UsageUnavailableError } from '../../src/usage/errors.ts'
import { AdminService } from '../../src/usage/admin.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import type { UsageHarness } from '../helpers/usage.ts'

type Counts = { deployments: number; api_calls: number; compute_hours: number }

/** The engine's store with `reset` replaced (its methods bound to it: they use private fields). */
function withReset(h: UsageHarness, reset: CounterStore['reset']): CounterStore {
  return new Proxy(h.store, {
    get: (target, prop) => {
      if (prop === 'reset') return reset
      const value: unknown = Reflect.get(target, prop, target)
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
    },
  })
}

function adminWith(h: UsageHarness, store: CounterStore, flushAll: () => Promise<unknown> = () => h.flusher.flushAll()): AdminService {
  return new AdminService({ pool: h.pool, store, limits: h.limits, usage: h.service, clock: h.clock, flushAll })
}

async function redisCounts(h: UsageHarness, userId: string): Promise<Counts> {
  const { metrics } = await h.service.status(userId)
  return { deployments: metrics.deployments.current, api_calls: metrics.api_calls.current, compute_hours: metrics.compute_hours.current }
}

async function postgresCounts(h: UsageHarness, userId: string): Promise<Counts | undefined> {
  const { rows } = await h.pool.query<{ d: number; a: number; c: string }>(
    'SELECT deployments_created AS d, api_calls AS a, compute_hours::text AS c FROM daily_usage WHERE user_id = $1 AND date = $2',
    [userId, '2026-11-28'],
  )
  const row = rows[0]
  return row && { deployments: Number(row.d), api_calls: Number(row.a), compute_hours: Number(row.c) }
}

/** Redis and daily_usage hold the same counts for each user, and nothing is left to flush. */
async function agree(t: Test, h: UsageHarness, users: readonly string[], label: string): Promise<void> {
  await h.flusher.flushAll()
  for (const u of users) t.same(await postgresCounts(h, u), await redisCounts(h, u), `${label}: Redis = daily_usage for ${u}`)
  t.same((await h.store.dirtyCounts()).reduce((a, b) => a + b, 0), 0, `${label}: nothing left dirty`)
}

async function spend(t: Test, h: UsageHarness, users: readonly string[]): Promise<void> {
  for (const u of users) t.equal((await h.service.consume(u, { deployments: 2, api_calls: 7, compute_hours: 1.5 })).allowed, true)
  await h.flusher.flushAll()
}

const FULL = { deployments: 2, api_calls: 7, compute_hours: 1.5 }
const ZERO = { deployments: 0, api_calls: 0, compute_hours: 0 }

t.test('a store failure for one user: the others are reset, the summary says partial, a retry finishes', async (t) => {
  const h = await createUsageHarness(t)
  const users = [newUserId(), newUserId(), newUserId(), newUserId()]
  const bad = users[2] as string
  await spend(t, h, users)

  let failing = true
  const store = withReset(h, async (userId, day, now, metrics) => {
    if (failing && userId === bad) throw new CounterUnavailableError('redis unavailable: Command timed out')
    return h.store.reset(userId, day, now, metrics)
  })
  const admin = adminWith(h, store)
  const first = await admin.reset()
  t.match(first, {
    user_id: null, users_reset: 3, users_failed: [bad], users_failed_count: 1, complete: false, persisted: true, rows_updated: 3,
  })
  for (const u of users) t.same(await redisCounts(h, u), u === bad ? FULL : ZERO, u === bad ? 'the failed user is untouched' : 'reset')
  await agree(t, h, users, 'after the partial reset')

  failing = false
  const retry = await admin.reset()
  t.match(retry, { users_reset: 4, users_failed: [], users_failed_count: 0, complete: true, persisted: true, rows_updated: 4 })
  for (const u of users) t.same(await redisCounts(h, u), ZERO)
  await agree(t, h, users, 'after the retry')

  const again = await admin.reset()
  t.match(again, { users_reset: 4, complete: true }, 'a third reset of the same scope is harmless')
  for (const u of users) t.same(await postgresCounts(h, u), ZERO, 'same end state')
})

t.test('the store unavailable for everyone: UsageUnavailableError (503), nothing changed', async (t) => {
  const h = await createUsageHarness(t)
  const users = [newUserId(), newUserId()]
  await spend(t, h, users)
  const admin = adminWith(h, withReset(h, async () => {
    throw new CounterUnavailableError('redis unavailable: connection closed')
  }))
  await t.rejects(admin.reset(), UsageUnavailableError, 'everyone')
  await t.rejects(admin.reset({ userId: users[0] }), UsageUnavailableError, 'one user')
  for (const u of users) t.same(await redisCounts(h, u), FULL)
  await agree(t, h, users, 'after the failed reset')
  const { rows } = await h.pool.query<{ outcome: string }>('SELECT outcome FROM admin_audit ORDER BY id')
  t.same(rows.map((r) => r.outcome), ['error', 'error'], 'both recorded as errors')
})

t.test('Postgres failing after the counters are zeroed: persisted false, the next flush writes the zeros', async (t) => {
  const h = await createUsageHarness(t)
  const users = [newUserId(), newUserId()]
  await spend(t, h, users)
  // The service's pool, except that the reset's UPDATE of daily_usage fails.
  const pool = new Proxy(h.pool, {
    get: (target, prop) => {
      if (prop === 'query') {
        return (query: unknown, ...rest: unknown[]) => {
          const text = typeof query === 'string' ? query : (query as { text?: string }).text ?? ''
          if (/UPDATE daily_usage/i.test(text)) return Promise.reject(new Error('Connection terminated unexpectedly'))
          return (target.query as (...a: unknown[]) => unknown).call(target, query, ...rest)
        }
      }
      const value: unknown = Reflect.get(target, prop, target)
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
    },
  })
  const admin = new AdminService({ pool, store: h.store, limits: h.limits, usage: h.service, clock: h.clock, flushAll: () => h.flusher.flushAll() })
  const summary = await admin.reset()
  t.match(summary, { users_reset: 2, users_failed_count: 0, complete: false, persisted: false, rows_updated: 0 })
  for (const u of users) t.same(await redisCounts(h, u), ZERO, 'the counters are zeroed')
  for (const u of users) t.same(await postgresCounts(h, u), FULL, 'daily_usage not yet')
  await agree(t, h, users, 'after the next flush')
  for (const u of users) t.same(await postgresCounts(h, u), ZERO, 'the flusher wrote the zeros')
  const { rows } = await h.pool.query<{ outcome: string; detail: { persist_error?: string } }>('SELECT outcome, detail FROM admin_audit')
  t.match(rows, [{ outcome: 'partial', detail: { persist_error: /Connection terminated/ } }], 'recorded as partial, with the reason')
})

t.test('a spend between a user\'s reset and the Postgres step is kept in daily_usage', async (t) => {
  const h = await createUsageHarness(t)
  const user = newUserId()
  await spend(t, h, [user])
  const store = withReset(h, async (userId, day, now, metrics) => {
    await h.store.reset(userId, day, now, metrics)
    // A request of the user and a flusher pass land right after the store's reset.
    t.equal((await h.service.consume(userId, { deployments: 1 })).allowed, true)
    await h.flusher.flushAll()
  })
  const summary = await adminWith(h, store).reset({ userId: user })
  t.match(summary, { users_reset: 1, complete: true })
  t.same(await redisCounts(h, user), { ...ZERO, deployments: 1 })
  t.same(await postgresCounts(h, user), { ...ZERO, deployments: 1 }, 'daily_usage keeps the spend made after the reset')
  await agree(t, h, [user], 'after the reset')
})

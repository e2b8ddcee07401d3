/**
 * Upgrade without a flag day (issue 13): a Redis holding the version-1 layout (a hash per
 * user-day, a gauge per user, a dirty set of user-days) is taken over by this version under load.
 * The v1 state is written here exactly as version 1 wrote it; then 20 concurrent loops spend while
 * the flusher makes passes. Every user-day must end in daily_usage with its v1 counts plus exactly
 * what was admitted afterwards, no limit may be passed, and no v1 mark may be left behind.
 */
import t from 'tap'
import { utcDay } from '../../src/clock.ts'
import { slotOf } from '../../src/counters/redis/keys.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { insertUser, todayNoon } from './fixtures.ts'

const M = 1_000_000
/** The free tier: 10 deployments a day, 5000 api_calls, storage 5. */
const DEPLOYMENTS_LIMIT = 10

t.test('a v1 layout is drained and migrated under load: exact totals, no limit passed', async (t) => {
  const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })
  const day = utcDay(h.clock.now())
  const tag = (user: string): string => `${h.prefix}{${slotOf(user).bucket}}`

  // 40 users in v1: 7 deployments, 100 api_calls, storage 2.5 at version 3. The first 20 were
  // flushed by the v1 flusher (row in daily_usage, no dirty mark); the other 20 were not.
  const users = Array.from({ length: 40 }, () => newUserId())
  // v1 rebuilt every bucket two days ago (its epoch markers have the same names in both layouts).
  for (let b = 0; b < 64; b++) await h.redis.set(`${h.prefix}{${b}}:epoch`, h.clock.now() - 2 * 86_400_000)
  const v1 = { deployments: 7, api_calls: 100, storage: 2.5, version: 3 }
  for (const [i, user] of users.entries()) {
    await insertUser(h.pool, user, 'free')
    await h.redis.hset(`${tag(user)}:d:${user}:${day}`,
      'd', v1.deployments * M, 'a', v1.api_calls * M, 'c', 0, 's', v1.storage * M, 'v', v1.version)
    await h.redis.expire(`${tag(user)}:d:${user}:${day}`, 3 * 86_400)
    await h.redis.set(`${tag(user)}:g:${user}`, v1.storage * M, 'EX', 35 * 86_400)
    if (i < 20) {
      await h.pool.query(
        `INSERT INTO daily_usage (user_id, date, deployments_created, api_calls, compute_hours, storage_gb, version)
         VALUES ($1, $2, $3, $4, 0, $5, $6)`, [user, day, v1.deployments, v1.api_calls, v1.storage, v1.version])
    } else {
      await h.redis.zadd(`${tag(user)}:dirty`, h.clock.now() - 1000, `${user}:${day}`)
    }
  }

  // Under load: 20 loops spend on random users while the flusher keeps passing.
  const admitted = new Map<string, { deployments: number; api_calls: number }>(users.map((u) => [u, { deployments: 0, api_calls: 0 }]))
  let stop = false
  const loop = async (seed: number): Promise<void> => {
    for (let i = 0; !stop; i++) {
      const user = users[(seed * 7 + i * 13) % users.length] as string
      const r = await h.service.consume(user, { deployments: 1, api_calls: 1 })
      if (r.allowed) {
        const a = admitted.get(user) as { deployments: number; api_calls: number }
        a.deployments += 1
        a.api_calls += 1
      } else {
        // Denied: a single api_calls spend still goes through, so the day keeps changing.
        const one = await h.service.consume(user, { api_calls: 1 })
        if (one.allowed) (admitted.get(user) as { api_calls: number }).api_calls += 1
      }
    }
  }
  const flushing = (async () => {
    while (!stop) await h.flusher.flushAll()
  })()
  const loops = Array.from({ length: 20 }, (_, i) => loop(i))
  await new Promise((resolve) => setTimeout(resolve, 3000))
  stop = true
  await Promise.all([...loops, flushing])
  await h.flusher.flushAll()

  const { rows } = await h.pool.query<{ user_id: string; deployments_created: number; api_calls: string; storage_gb: string }>(
    'SELECT user_id, deployments_created, api_calls, storage_gb FROM daily_usage WHERE date = $1', [day])
  const byUser = new Map(rows.map((r) => [r.user_id, r]))
  let spends = 0
  for (const user of users) {
    const row = byUser.get(user)
    const a = admitted.get(user) as { deployments: number; api_calls: number }
    spends += a.api_calls
    t.same(
      { deployments: row?.deployments_created, api_calls: Number(row?.api_calls), storage: Number(row?.storage_gb) },
      { deployments: v1.deployments + a.deployments, api_calls: v1.api_calls + a.api_calls, storage: v1.storage },
      `user ${user.slice(0, 8)}: v1 counts + what was admitted after the upgrade`,
      { diagnostic: false },
    )
    t.ok(v1.deployments + a.deployments <= DEPLOYMENTS_LIMIT, 'never past the limit')
  }
  t.ok(spends > users.length * 3, `the load ran (${spends} api_calls admitted after the upgrade)`)
  for (const user of users.slice(0, 3)) {
    t.equal((await h.service.status(user)).metrics.storage.current, v1.storage, 'the v1 gauge came along')
  }
  let v1Marks = 0
  let v1Days = 0
  for (const user of users) {
    v1Marks += await h.redis.zcard(`${tag(user)}:dirty`)
    v1Days += await h.redis.exists(`${tag(user)}:d:${user}:${day}`)
  }
  t.equal(v1Marks, 0, 'no v1 dirty mark left')
  t.equal(v1Days, 0, 'every v1 day hash moved into the new layout')
  t.same(await h.store.readDirty(100), [], 'nothing left to flush')
})

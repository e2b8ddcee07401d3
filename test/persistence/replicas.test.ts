/**
 * Scale-out (DESIGN 3): two replicas on one Redis and one Postgres.
 * - both flush (every replica may flush: rows are version-guarded), and daily_usage equals the
 *   200s of both, exactly;
 * - exactly one of them holds the leader lock (the advisory lock of src/persistence/leader.ts) and
 *   says so in its log;
 * - kill -9 the leader: Postgres drops its session and its lock, the other replica takes over
 *   within a few seconds, and flushes what the dead one left dirty.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { LEADER_LOCK_ID } from '../../src/persistence/leader.ts'
import { dirtyCount } from '../helpers/counters.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { byUser, createUsers, startLoad, usageTotals } from '../helpers/load.ts'
import { waitUntil } from '../helpers/net.ts'
import { TEST_REDIS_URL, createTestRedis } from '../helpers/redis.ts'
import { startService } from '../helpers/service-process.ts'
import type { ServiceProcess } from '../helpers/service-process.ts'

const LEADER_LINE = 'this replica now runs the scheduled jobs'

t.test('two replicas: exact totals, one leader, takeover after kill -9', async (t) => {
  const db = await createTestDatabase(t)
  const redis = createTestRedis(t)
  const env = { DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redis.prefix, FLUSH_INTERVAL_MS: '500', LOG_LEVEL: 'info' }
  const a = await startService(t, env)
  const b = await startService(t, { ...env, JWT_SECRET: a.env.JWT_SECRET })
  const users = await createUsers(db.pool, a.env.JWT_SECRET as string, 8)
  const ids = users.map((u) => u.id)

  /** Backend pids holding the leader lock in this database. */
  const lockHolders = async (): Promise<number[]> => {
    const { rows } = await db.pool.query<{ pid: number }>(
      `SELECT pid FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 1
          AND classid = $1::bigint::oid AND objid = $2::bigint::oid
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      [String(LEADER_LOCK_ID >> 32n), String(LEADER_LOCK_ID & 0xffffffffn)],
    )
    return rows.map((r) => r.pid)
  }
  const leaders = (): ServiceProcess[] => [a, b].filter((s) => s.output().includes(LEADER_LINE))

  // Both replicas under load; the same users on both.
  const loadA = startLoad({ baseUrls: [a.baseUrl], users, concurrency: 3, maxRequests: 30_000 })
  const loadB = startLoad({ baseUrls: [b.baseUrl], users, concurrency: 3, maxRequests: 30_000 })
  await Promise.all([loadA.waitForAdmitted(300, 15_000), loadB.waitForAdmitted(300, 15_000)])
  await sleep(1000)

  const holders = await lockHolders()
  t.equal(holders.length, 1, 'exactly one session holds the leader lock')
  t.equal(leaders().length, 1, `exactly one replica logged "${LEADER_LINE}"`)
  const leader = leaders()[0] ?? a
  const follower = leader === a ? b : a
  const [leaderLoad, followerLoad] = leader === a ? [loadA, loadB] : [loadB, loadA]

  // The leader's clients get all their answers, then it dies with changes still dirty.
  const leaderStats = await leaderLoad.stop()
  leader.signal('SIGKILL')
  const killedAt = Date.now()
  await leader.waitForExit(5000)

  await waitUntil(async () => follower.output().includes(LEADER_LINE), {
    what: 'the follower taking over', timeoutMs: 10_000, intervalMs: 50,
  })
  const takeoverMs = Date.now() - killedAt
  t.ok(takeoverMs < 5000, `the other replica took over ${takeoverMs} ms after the kill`)
  const newHolders = await lockHolders()
  t.equal(newHolders.length, 1, 'one lock holder again')
  t.not(newHolders[0], holders[0], 'held by another session')

  await sleep(500)
  const followerStats = await followerLoad.stop()
  const expected = (id: string): number =>
    (leaderStats.admittedByUser.get(id) ?? 0) + (followerStats.admittedByUser.get(id) ?? 0)
  await waitUntil(async () => {
    const totals = await usageTotals(db.pool, ids)
    return ids.every((id) => (totals.get(id)?.api ?? 0) === expected(id))
  }, { what: 'daily_usage equal to the 200s of both replicas', timeoutMs: 10_000, intervalMs: 100 })
  const totals = await usageTotals(db.pool, ids)
  t.same(byUser(users, (id) => totals.get(id)?.api ?? 0), byUser(users, expected), 'daily_usage = 200s of both replicas, per user')
  t.equal(await dirtyCount(redis, redis.prefix), 0, 'nothing left dirty')
  const other = [...leaderStats.statuses.keys(), ...followerStats.statuses.keys()].filter((s) => s !== 200)
  t.same(other, [], 'every request answered 200')

  follower.signal('SIGTERM')
  t.same(await follower.waitForExit(10_000), { code: 0, signal: null }, 'the survivor exits 0 on SIGTERM')
  t.comment(`admitted: leader ${leaderStats.admitted}, follower ${followerStats.admitted}; takeover ${takeoverMs} ms`)
  if (!t.passing()) t.comment(a.output(), b.output())
})

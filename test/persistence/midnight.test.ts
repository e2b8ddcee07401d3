/**
 * Invariant 5, midnight UTC, in-process with a ManualClock (no waiting for a real midnight):
 * - a request at 23:59:59.9Z and one at 00:00:00.1Z count on two days, in two daily_usage rows;
 * - the new day starts at 0 with the full allowance, while the storage gauge carries over;
 * - the leader's scheduler tick closes the day that ended: everything flushed, the gauge written
 *   into the new day's row for users not active yet, scheduler_runs records the day, and the log
 *   says "daily reset: <date> closed, N users" — once: a second tick, a second Scheduler (another
 *   replica) or a follower does not run it again;
 * - the old day's Redis hash is not dirty any more and expires by itself.
 */
import { Writable } from 'node:stream'
import { pino } from 'pino'
import t from 'tap'
import type { DailyUsageRow } from '../helpers/database.ts'
import { utcDay } from '../../src/clock.ts'
import { KeySpace, markMember, slotOf } from '../../src/counters/redis/keys.ts'
import { LeaderLock } from '../../src/persistence/leader.ts'
import { MIDNIGHT_JOB, Scheduler } from '../../src/persistence/scheduler.ts'
import { buildTestApp } from '../helpers/app.ts'

const DAY1 = '2026-11-28'
const DAY2 = '2026-11-29'

type Row = DailyUsageRow

t.test('midnight: two days, two rows, the day closed once, storage carried over', async (t) => {
  const { app, db, clock, user, prefix } = await buildTestApp(t, { now: `${DAY1}T20:00:00.000Z` })
  const lines: { msg: string; level: number }[] = []
  const logger = pino({ level: 'info' }, new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as { msg: string; level: number })
      done()
    },
  }))
  const a = user()
  const b = user()
  const post = async (who: { headers: Record<string, string> }, url: string, payload: unknown) => {
    const res = await app.inject({ method: 'POST', url, headers: who.headers, payload: payload as Record<string, unknown> })
    return { status: res.statusCode, body: res.json() as Record<string, unknown> }
  }
  const status = async (who: { headers: Record<string, string> }) => {
    const res = await app.inject({ url: '/api/usage/status', headers: who.headers })
    t.equal(res.statusCode, 200)
    return res.json() as { date: string; metrics: Record<string, { current: number; remaining: number | null }> }
  }
  const rows = async (): Promise<Row[]> => (await db.pool.query<Row>(
    `SELECT user_id::text, date::text, deployments_created, api_calls, compute_hours::text, storage_gb::text, version
       FROM daily_usage WHERE user_id = ANY($1::uuid[]) ORDER BY date, user_id`,
    [[a.id, b.id]],
  )).rows
  const pick = (all: Row[], who: string, date: string) => {
    const r = all.find((x) => x.user_id === who && x.date === date)
    return r && { api: r.api_calls, storage: Number(r.storage_gb) }
  }

  // Day 1: both users store data; B makes 3 api calls earlier in the evening.
  t.equal((await post(a, '/api/usage/increment', { metric: 'storage', amount: 2.5 })).status, 200)
  t.equal((await post(b, '/api/usage/increment', { metric: 'storage', amount: 1.25 })).status, 200)
  t.equal((await post(b, '/api/usage/consume', { metric: 'api_calls', amount: 3 })).status, 200)

  clock.set(`${DAY1}T23:59:59.900Z`)
  const late = await post(a, '/api/usage/consume', { metric: 'api_calls', amount: 1 })
  t.equal(late.status, 200)
  t.equal(late.body.current, 1, '23:59:59.9Z counts on day 1')

  clock.set(`${DAY2}T00:00:00.100Z`)
  const fresh = await status(a)
  t.equal(fresh.date, DAY2)
  t.match(fresh.metrics.api_calls, { current: 0, remaining: 5000 }, 'the new day starts at 0 with the full allowance')
  t.match(fresh.metrics.storage, { current: 2.5 }, 'the storage gauge carries over')
  const early = await post(a, '/api/usage/consume', { metric: 'api_calls', amount: 1 })
  t.equal(early.status, 200)
  t.equal(early.body.current, 1, '00:00:00.1Z counts on day 2, from 0')

  // Leader election: one of two locks on this database wins.
  const lock = new LeaderLock({ databaseUrl: db.url, retryMs: 100 })
  const rival = new LeaderLock({ databaseUrl: db.url, retryMs: 100 })
  t.teardown(async () => {
    await lock.stop()
    await rival.stop()
  })
  await lock.start()
  await rival.start()
  t.equal(lock.isLeader, true, 'the first lock leads')
  t.equal(rival.isLeader, false, 'the second does not')

  const common = { pool: app.pool, flusher: app.quota.flusher, clock, logger }
  const follower = new Scheduler({ ...common, isLeader: () => rival.isLeader })
  t.equal(await follower.tick(), null, 'a follower does not run the job')

  const scheduler = new Scheduler({ ...common, isLeader: () => lock.isLeader })
  const result = await scheduler.tick()
  t.match(result, { day: DAY1, ran: true, users: 2, storageCarried: 1 }, 'the leader closes day 1 (B carried; A already active)')

  const closed = await rows()
  t.same(pick(closed, a.id, DAY1), { api: 1, storage: 2.5 }, 'A day 1: final totals')
  t.same(pick(closed, b.id, DAY1), { api: 3, storage: 1.25 }, 'B day 1: final totals')
  t.same(pick(closed, a.id, DAY2), { api: 1, storage: 2.5 }, 'A day 2: its own row, storage carried')
  t.same(pick(closed, b.id, DAY2), { api: 0, storage: 1.25 }, 'B day 2: a row with the storage gauge, written by the job')
  const runs = await db.pool.query<{ day: string; detail: string }>('SELECT day::text, detail FROM scheduler_runs WHERE job = $1', [MIDNIGHT_JOB])
  t.same(runs.rows.map((r) => r.day), [DAY1], 'scheduler_runs has the day')

  // Day 1 is done in Redis: nothing dirty, and its hash expires by itself.
  const keys = new KeySpace(prefix)
  const redis = app.redis
  if (!redis) throw new Error('the test app runs in mode redis')
  const ttl = await redis.ttl(keys.userDay(a.id, DAY1))
  t.ok(ttl > 0 && ttl <= 3 * 86_400, `day 1's hash expires by itself (ttl ${ttl} s)`)
  for (const [name, id] of [['A', a.id], ['B', b.id]] as const) {
    const slot = slotOf(id)
    t.equal(await redis.zscore(keys.marks(slot.bucket), markMember(DAY1, slot.shard)), null, `${name}'s day 1 is not dirty`)
    t.match(await redis.hget(keys.userDay(id, DAY1), id), /,(\d+),\1$/, `${name}'s entry is flushed (v = f)`)
  }

  // Once per day, whatever happens.
  t.equal(await scheduler.tick(), null, 'a second tick does nothing')
  const other = new Scheduler({ ...common, isLeader: () => true })
  t.match(await other.tick(), { day: DAY1, ran: false }, 'a second Scheduler (another replica) finds the day closed')
  t.match(await scheduler.closeDay(DAY1), { ran: false }, 'closing it explicitly again does nothing')
  const message = `daily reset: ${DAY1} closed, 2 users`
  t.equal(lines.filter((l) => l.msg === message).length, 1, `"${message}" logged once`)
  t.equal(lines.filter((l) => l.msg.startsWith('daily reset')).length, 1, 'no other daily-reset line')
  t.equal((await db.pool.query('SELECT 1 FROM scheduler_runs')).rowCount, 1, 'one scheduler_runs row')

  // B's first request of day 2 builds on the carried gauge; the flush overwrites the job's row.
  const bDay2 = await post(b, '/api/usage/consume', { metric: 'api_calls', amount: 2 })
  t.equal(bDay2.body.current, 2)
  await app.quota.flusher.flushAll()
  const later = await rows()
  t.same(pick(later, b.id, DAY2), { api: 2, storage: 1.25 }, 'B day 2 after its first request')
  t.same(pick(later, b.id, DAY1), { api: 3, storage: 1.25 }, 'B day 1 unchanged')
  t.equal(utcDay(clock.now()), DAY2)
})

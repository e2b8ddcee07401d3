/**
 * The partition keeper (docs/scaling.md, "History at scale"), on a ManualClock:
 * - only the leader runs it: at its first tick, then once per UTC day; a follower does nothing;
 * - it makes the current month's partition and the next three, moving rows that waited in DEFAULT;
 * - with HISTORY_RETENTION_MONTHS it detaches and drops whole months older than that, says which in
 *   the log, and never the current month (nor the previous one with 1);
 * - HISTORY_RETENTION_MONTHS is validated, and reaches the leader's keeper through buildApp.
 */
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import t from 'tap'
import { ManualClock, utcDay } from '../../src/clock.ts'
import { ConfigError, loadConfig } from '../../src/config.ts'
import type { Pool } from '../../src/db/client.ts'
import { DEFAULT_PARTITION, addMonths, ensurePartitions, listPartitions, monthOf, partitionName } from '../../src/db/partitions.ts'
import { PartitionKeeper } from '../../src/persistence/partition-keeper.ts'
import { buildTestApp } from '../helpers/app.ts'
import { createTestDatabase } from '../helpers/database.ts'

const USER = '550e8400-e29b-41d4-a716-446655440000'
/** The months migration 0006 made: the real current one and the next three. */
const MIGRATED = [0, 1, 2, 3].map((n) => partitionName(addMonths(monthOf(utcDay(Date.now())), n)))

function captureLog() {
  const lines: { msg: string; level: number }[] = []
  const logger = pino({ level: 'info' }, new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as { msg: string; level: number })
      done()
    },
  }))
  return { logger, lines }
}

async function names(pool: Pool): Promise<string[]> {
  return (await listPartitions(pool)).ranges.map((r) => r.name)
}

t.test('the leader keeps the current month and the next three, at its first tick and then daily', async (t) => {
  const db = await createTestDatabase(t)
  const clock = new ManualClock('2031-02-10T08:00:00.000Z')
  await db.pool.query(`INSERT INTO users (id, username) VALUES ($1, 'k')`, [USER])
  // Written while 2031-03 had no partition: it waited in DEFAULT.
  await db.pool.query(`INSERT INTO daily_usage (user_id, date, api_calls) VALUES ($1, '2031-03-05', 4)`, [USER])

  const follower = new PartitionKeeper({ pool: db.pool, clock, isLeader: () => false })
  t.equal(await follower.tick(), null, 'a follower does nothing')
  t.same(await names(db.pool), MIGRATED)

  const { logger, lines } = captureLog()
  const keeper = new PartitionKeeper({ pool: db.pool, clock, isLeader: () => true, logger })
  t.match(await keeper.tick(), {
    day: '2031-02-10', created: ['daily_usage_2031_02', 'daily_usage_2031_03', 'daily_usage_2031_04', 'daily_usage_2031_05'],
    moved: 1, dropped: [], defaultRowsDeleted: 0,
  })
  const home = await db.pool.query(`SELECT tableoid::regclass::text AS p, api_calls FROM daily_usage WHERE date = '2031-03-05'`)
  t.same(home.rows, [{ p: 'daily_usage_2031_03', api_calls: 4 }], 'the waiting row moved into its month')
  t.ok(lines.some((l) => l.msg === `daily_usage partition daily_usage_2031_03 created, 1 rows moved into it from ${DEFAULT_PARTITION}`))
  t.ok(lines.some((l) => l.msg === 'daily_usage partition daily_usage_2031_05 created'))

  t.equal(await keeper.tick(), null, 'once a day: a second tick the same day does nothing')
  clock.advance(86_400_000)
  t.match(await keeper.tick(), { day: '2031-02-11', created: [] }, 'the next day it checks again: nothing to make')
  clock.set('2031-03-01T00:00:05.000Z')
  t.match(await keeper.tick(), { day: '2031-03-01', created: ['daily_usage_2031_06'] }, 'a new month: one more ahead')
  t.equal(lines.filter((l) => l.level >= 50).length, 0, 'no error logged')
})

t.test('a failed run is logged once and retried at the next tick', async (t) => {
  const db = await createTestDatabase(t)
  const clock = new ManualClock('2035-01-10T00:00:00.000Z')
  const { logger, lines } = captureLog()
  let broken = true
  const pool = new Proxy(db.pool, {
    get: (target, key, receiver) => key === 'query' && broken
      ? () => Promise.reject(new Error('connection refused'))
      : Reflect.get(target, key, receiver) as unknown,
  })
  const keeper = new PartitionKeeper({ pool, clock, isLeader: () => true, logger })
  t.equal(await keeper.tick(), null)
  t.equal(await keeper.tick(), null)
  t.same(lines.filter((l) => l.level >= 50).map((l) => l.msg), ['partition maintenance failed; will retry'], 'one error line')
  broken = false
  t.match(await keeper.tick(), { created: ['daily_usage_2035_01', 'daily_usage_2035_02', 'daily_usage_2035_03', 'daily_usage_2035_04'] })
  t.ok(lines.some((l) => l.msg === 'partition maintenance recovered'))
})

t.test('retention: whole months older than N are detached, dropped and named in the log', async (t) => {
  const db = await createTestDatabase(t)
  const clock = new ManualClock('2031-06-15T12:00:00.000Z')
  await db.pool.query(`INSERT INTO users (id, username) VALUES ($1, 'r')`, [USER])
  await ensurePartitions(db.pool, '2030-12-01', 6)
  await db.pool.query(`INSERT INTO daily_usage (user_id, date) SELECT $1, d::date
    FROM unnest('{2030-12-31,2031-01-31,2031-02-28,2031-03-01,2031-04-30,2031-05-31,2031-06-15}'::date[]) d`, [USER])
  await db.pool.query(`INSERT INTO daily_usage (user_id, date) VALUES ($1, '2029-01-01')`, [USER]) // in DEFAULT

  const { logger, lines } = captureLog()
  const keeper = new PartitionKeeper({ pool: db.pool, clock, isLeader: () => true, retentionMonths: 3, logger })
  const run = await keeper.tick()
  // The cutoff is 2031-03-01: December to February go (and the real months the migration made, years before).
  const gone = [...MIGRATED, 'daily_usage_2030_12', 'daily_usage_2031_01', 'daily_usage_2031_02']
  t.same(run?.dropped.map((p) => p.name), gone)
  t.equal(run?.defaultRowsDeleted, 1, "DEFAULT's row of 2029")
  t.same(await names(db.pool), ['daily_usage_2031_03', 'daily_usage_2031_04', 'daily_usage_2031_05', 'daily_usage_2031_06',
    'daily_usage_2031_07', 'daily_usage_2031_08', 'daily_usage_2031_09'])
  const dates = await db.pool.query<{ d: string }>(`SELECT date::text AS d FROM daily_usage ORDER BY 1`)
  t.same(dates.rows.map((r) => r.d), ['2031-03-01', '2031-04-30', '2031-05-31', '2031-06-15'], 'whole months kept, the rest gone')
  t.ok(lines.some((l) => l.msg === 'daily_usage partition daily_usage_2031_02 (2031-02-01 to 2031-03-01) dropped: older than 3 months'))
  t.ok(lines.some((l) => l.msg === `1 rows before 2031-03-01 deleted from ${DEFAULT_PARTITION}: older than 3 months`))

  // The shortest retention keeps the previous month and the current one, whatever the day.
  clock.set('2031-06-30T23:59:59.000Z')
  const shortest = new PartitionKeeper({ pool: db.pool, clock, isLeader: () => true, retentionMonths: 1 })
  t.same((await shortest.tick())?.dropped.map((p) => p.name), ['daily_usage_2031_03', 'daily_usage_2031_04'])
  t.same((await names(db.pool)).slice(0, 2), ['daily_usage_2031_05', 'daily_usage_2031_06'], 'May and June kept')

  t.throws(() => new PartitionKeeper({ pool: db.pool, clock, isLeader: () => true, retentionMonths: 0 }), RangeError)
  t.throws(() => new PartitionKeeper({ pool: db.pool, clock, isLeader: () => true, retentionMonths: 1.5 }), RangeError)
  t.throws(() => new PartitionKeeper({ pool: db.pool, clock, isLeader: () => true, monthsAhead: -1 }), RangeError)
})

t.test('HISTORY_RETENTION_MONTHS: validated; unset keeps everything', async (t) => {
  const cwd = t.testdir()
  const env = { JWT_SECRET: 'a-test-secret-that-is-long-enough-32b' }
  t.equal(loadConfig(env, { cwd }).historyRetentionMonths, undefined)
  t.equal(loadConfig({ ...env, HISTORY_RETENTION_MONTHS: '' }, { cwd }).historyRetentionMonths, undefined, 'empty = unset')
  t.equal(loadConfig({ ...env, HISTORY_RETENTION_MONTHS: '13' }, { cwd }).historyRetentionMonths, 13)
  for (const bad of ['0', '1201', '1.5', '-3', 'twelve']) {
    t.throws(() => loadConfig({ ...env, HISTORY_RETENTION_MONTHS: bad }, { cwd }),
      new ConfigError('HISTORY_RETENTION_MONTHS', `must be a whole number from 1 to 1200, got "${bad}"`), bad)
  }
})

t.test('through buildApp: the leader runs it at start, with HISTORY_RETENTION_MONTHS', async (t) => {
  const db = await createTestDatabase(t)
  const { app } = await buildTestApp(t, {
    db, now: '2033-07-04T10:00:00.000Z', env: { HISTORY_RETENTION_MONTHS: '2' }, quota: { scheduler: true },
  })
  const want = ['daily_usage_2033_07', 'daily_usage_2033_08', 'daily_usage_2033_09', 'daily_usage_2033_10']
  let seen: string[] = []
  for (let i = 0; i < 100 && seen.join() !== want.join(); i++) {
    await sleep(100)
    seen = await names(db.pool)
  }
  t.same(seen, want, "made ahead from the app's clock; the migration's months, years older, dropped")
  await app.close()
})

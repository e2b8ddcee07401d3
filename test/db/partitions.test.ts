/**
 * daily_usage by month (docs/scaling.md, "History at scale"):
 * - migration 0006 turns a populated table into a partitioned one without losing or changing a
 *   row, each row in its month's partition, and its down script turns it back with every row;
 * - the flusher's ON CONFLICT (user_id, date) upsert and the user foreign key work across partitions;
 * - ensureMonthPartition is idempotent, and moves a month's rows out of the DEFAULT partition (where
 *   Postgres would refuse the partition) in one transaction: a lock not granted in time changes nothing;
 * - dropPartitionsBefore detaches and drops whole months before the cutoff, and nothing else;
 * - all of it on PGlite too (embedded mode).
 */
import { cpSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { utcDay } from '../../src/clock.ts'
import type { Pool } from '../../src/db/client.ts'
import { upsertTotals } from '../../src/db/daily-usage.ts'
import { MIGRATIONS_FOLDER, migrate, rollback } from '../../src/db/migrate.ts'
import {
  DEFAULT_PARTITION, addMonths, dropPartitionsBefore, ensureMonthPartition, ensurePartitions, listPartitions, monthOf,
  partitionName,
} from '../../src/db/partitions.ts'
import { asPool, openEmbeddedDatabase } from '../../src/db/pglite-pool.ts'
import { TOP_USERS } from '../helpers/spec-sql.ts'
import { createTestDatabase, emptyDatabase } from '../helpers/database.ts'

const A = '550e8400-e29b-41d4-a716-446655440000'
const B = '6ba7b810-9dad-11d1-80b4-00c04fd430c8'
const THIS_MONTH = monthOf(utcDay(Date.now()))

/** A copy of the migrations folder whose journal ends at `lastTag`: a database as an older release left it. */
function migrationsUpTo(dir: string, lastTag: string): string {
  cpSync(MIGRATIONS_FOLDER, dir, { recursive: true })
  const file = join(dir, 'meta', '_journal.json')
  const journal = JSON.parse(readFileSync(file, 'utf8')) as { entries: { tag: string }[] }
  const end = journal.entries.findIndex((e) => e.tag === lastTag)
  journal.entries = journal.entries.slice(0, end + 1)
  writeFileSync(file, JSON.stringify(journal))
  return dir
}

/** Every row, every column, as text: what "no row lost or changed" compares. */
async function allRows(pool: Pool): Promise<string[]> {
  const { rows } = await pool.query<{ r: string }>(`SELECT du::text AS r FROM daily_usage du ORDER BY user_id, date`)
  return rows.map((x) => x.r)
}

/** Where each row lives: date -> partition. */
async function homes(pool: Pool): Promise<Record<string, string>> {
  const { rows } = await pool.query<{ date: string; home: string }>(
    `SELECT date::text AS date, tableoid::regclass::text AS home FROM daily_usage ORDER BY date`)
  return Object.fromEntries(rows.map((r) => [r.date, r.home]))
}

async function addUsers(pool: Pool): Promise<void> {
  await pool.query(`INSERT INTO users (id, username) VALUES ($1, 'a'), ($2, 'b')`, [A, B])
}

const counts = (apiCalls: number) => ({ deployments: 1_000_000, api_calls: apiCalls * 1_000_000, compute_hours: 250_000, storage: 0 })

t.test('migration 0006 keeps every row, each in its month; its down script gives them all back', async (t) => {
  const db = await emptyDatabase(t)
  t.same(await migrate(db.url, migrationsUpTo(t.testdir(), '0005_usage_events')), [
    '0000_init', '0001_utc_tiers_notify', '0002_widen_daily_counts', '0003_admin_audit', '0004_idempotency_records', '0005_usage_events',
  ])
  await addUsers(db.pool)
  const today = utcDay(Date.now())
  // Far past, both sides of a month boundary, today, and years ahead; exact decimals and a count past 2^31.
  await db.pool.query(
    `INSERT INTO daily_usage (user_id, date, deployments_created, api_calls, compute_hours, storage_gb, updated_at, version)
     VALUES ($1, '2019-03-10', 3, 4000000000, 1.000001, 2.5, '2019-03-10T23:00:00Z', 7),
            ($1, '2025-06-30', 1, 2, 0.1, 0, '2025-06-30T10:00:00Z', 1),
            ($2, '2025-07-01', 9, 4999, 9.999999, 4.75, '2025-07-01T10:00:00Z', 12),
            ($1, $3, 5, 6, 0, 3, now(), 2),
            ($2, '2031-01-15', 0, 1, 0, 0, '2026-01-01T00:00:00Z', 1)`,
    [A, B, today],
  )
  const before = await allRows(db.pool)
  t.equal(before.length, 5)

  t.same(await migrate(db.url), ['0006_partition_daily_usage'])
  t.same(await allRows(db.pool), before, 'every row, every value, as it was')
  t.same(await homes(db.pool), {
    '2019-03-10': 'daily_usage_2019_03',
    '2025-06-30': 'daily_usage_2025_06',
    '2025-07-01': 'daily_usage_2025_07',
    [today]: partitionName(THIS_MONTH),
    '2031-01-15': 'daily_usage_2031_01',
  }, "each row in its month's partition")
  const { ranges, hasDefault } = await listPartitions(db.pool)
  t.ok(hasDefault, 'a DEFAULT partition')
  t.same(ranges.map((r) => r.name), [
    'daily_usage_2019_03', 'daily_usage_2025_06', 'daily_usage_2025_07',
    ...[0, 1, 2, 3].map((n) => partitionName(addMonths(THIS_MONTH, n))),
    'daily_usage_2031_01',
  ], "the data's months, then the current month and the next three")
  t.notOk((await db.pool.query(`SELECT to_regclass('daily_usage_unpartitioned') AS r`)).rows[0].r, 'the old table is gone')

  // The flusher's upsert: ON CONFLICT (user_id, date) across partitions, version-guarded.
  const written = await upsertTotals(db.pool, [
    { userId: A, day: today, counts: counts(8), version: 3 },
    { userId: B, day: today, counts: counts(1), version: 1 },
    { userId: A, day: '2019-03-10', counts: counts(1), version: 6 }, // older version: changes nothing
  ])
  t.equal(written, 2)
  const now = await db.pool.query(`SELECT user_id::text, api_calls, version FROM daily_usage WHERE date = $1 ORDER BY user_id`, [today])
  t.same(now.rows, [{ user_id: A, api_calls: 8, version: 3 }, { user_id: B, api_calls: 1, version: 1 }])
  t.equal((await db.pool.query(`SELECT api_calls FROM daily_usage WHERE date = '2019-03-10'`)).rows[0].api_calls, 4_000_000_000)
  // An unknown month lands in DEFAULT; the foreign key holds in every partition.
  await db.pool.query(`INSERT INTO daily_usage (user_id, date) VALUES ($1, '2040-02-02')`, [B])
  t.equal((await homes(db.pool))['2040-02-02'], DEFAULT_PARTITION)
  await t.rejects(db.pool.query(`INSERT INTO daily_usage (user_id, date) VALUES ('00000000-0000-4000-8000-000000000001', $1)`, [today]),
    { code: '23503' }, 'an unknown user is refused')
  await t.rejects(db.pool.query(`INSERT INTO daily_usage (user_id, date) VALUES ($1, $2)`, [A, today]), { code: '23505' }, 'the primary key holds')

  const after = await allRows(db.pool)
  t.equal(await rollback(db.url), '0006_partition_daily_usage')
  t.same(await allRows(db.pool), after, 'down: every row back in one plain table')
  t.same((await db.pool.query(`SELECT relkind FROM pg_class WHERE oid = 'daily_usage'::regclass`)).rows, [{ relkind: 'r' }])
  t.same((await db.pool.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname LIKE 'daily_usage\\_%' AND relkind = 'r'`)).rows,
    [{ n: 0 }], 'no partition left behind')

  await db.pool.query('DELETE FROM users WHERE id = $1', [A])
  t.equal(await migrate(db.url).then((tags) => tags.join()), '0006_partition_daily_usage', 'and up again')
  t.same(await allRows(db.pool), after.filter((r) => !r.includes(A)), 'cascade deleted A before; B kept')
  await db.pool.query('DELETE FROM users WHERE id = $1', [B])
  t.same(await allRows(db.pool), [], 'ON DELETE CASCADE reaches every partition')
})

t.test('ensureMonthPartition: idempotent; a month waiting in DEFAULT moves into its new partition', async (t) => {
  const db = await createTestDatabase(t)
  const pool = db.pool
  await addUsers(pool)
  await pool.query(`INSERT INTO daily_usage (user_id, date, api_calls) VALUES ($1, '2030-05-01', 1), ($2, '2030-05-31', 2),
    ($1, '2030-06-01', 3)`, [A, B])
  t.same(await homes(pool), { '2030-05-01': DEFAULT_PARTITION, '2030-05-31': DEFAULT_PARTITION, '2030-06-01': DEFAULT_PARTITION })
  // Why the move exists: Postgres will not create a partition for rows the DEFAULT one holds.
  await t.rejects(pool.query(`CREATE TABLE probe PARTITION OF daily_usage FOR VALUES FROM ('2030-05-01') TO ('2030-06-01')`),
    { code: '23514' })

  const before = await allRows(pool)
  t.same(await ensureMonthPartition(pool, '2030-05-01'), { month: '2030-05-01', name: 'daily_usage_2030_05', created: true, moved: 2 })
  t.same(await homes(pool), { '2030-05-01': 'daily_usage_2030_05', '2030-05-31': 'daily_usage_2030_05', '2030-06-01': DEFAULT_PARTITION })
  t.same(await allRows(pool), before, 'moved, not changed')
  t.same(await ensureMonthPartition(pool, '2030-05-01'), { month: '2030-05-01', name: 'daily_usage_2030_05', created: false, moved: 0 },
    'a second time: nothing to do')
  // The moved-into partition is a full partition: keys, foreign key and index like the others.
  const defs = await pool.query<{ def: string }>(
    `SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'daily_usage_2030_05'::regclass ORDER BY 1`)
  t.same(defs.rows.map((r) => r.def), ['FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE', 'PRIMARY KEY (user_id, date)'])
  const indexes = await pool.query(`SELECT count(*)::int AS n FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indexrelid
    WHERE x.indrelid = 'daily_usage_2030_05'::regclass`)
  t.equal(indexes.rows[0].n, 2, 'both indexes attached to the parent ones')
  await t.rejects(pool.query(`INSERT INTO daily_usage (user_id, date) VALUES ($1, '2030-05-01')`, [A]), { code: '23505' })

  // Empty months take the plain CREATE TABLE ... PARTITION OF path.
  const made = await ensurePartitions(pool, '2030-07-01', 2)
  t.same(made.map((p) => [p.name, p.created, p.moved]), [['daily_usage_2030_07', true, 0], ['daily_usage_2030_08', true, 0], ['daily_usage_2030_09', true, 0]])
  t.same((await ensurePartitions(pool, '2030-07-01', 2)).map((p) => p.created), [false, false, false])

  // A table that only has the partition's name is not taken for it.
  await pool.query(`CREATE TABLE daily_usage_2030_10 (note text)`)
  await t.rejects(ensureMonthPartition(pool, '2030-10-01'), { message: 'daily_usage_2030_10 exists but is not a partition of daily_usage' })
  await pool.query(`DROP TABLE daily_usage_2030_10`)
  t.match(await ensureMonthPartition(pool, '2030-10-01'), { created: true })

  // A partition made by hand under another name that covers the month counts as its partition.
  await pool.query(`CREATE TABLE by_hand PARTITION OF daily_usage FOR VALUES FROM ('2030-11-15') TO ('2030-12-15')`)
  t.same((await ensurePartitions(pool, '2030-11-01', 1)).map((p) => p.created), [false, false])
})

t.test('a lock not granted in time: the move fails whole, and the next run does it', async (t) => {
  const db = await createTestDatabase(t)
  const pool = db.pool
  await addUsers(pool)
  await pool.query(`INSERT INTO daily_usage (user_id, date) VALUES ($1, '2032-02-02'), ($2, '2032-02-03')`, [A, B])
  // An open transaction that changed a user: the new partition's foreign key needs a lock on users
  // that conflicts with it, and is asked for after the rows left DEFAULT.
  const other = new pg.Client({ connectionString: db.url })
  await other.connect()
  t.teardown(() => other.end())
  await other.query('BEGIN')
  await other.query(`UPDATE users SET username = 'a2' WHERE id = $1`, [A])
  await t.rejects(ensureMonthPartition(pool, '2032-02-01', { lockTimeoutMs: 200 }), { code: '55P03' }, 'lock_timeout')
  t.same(await homes(pool), { '2032-02-02': DEFAULT_PARTITION, '2032-02-03': DEFAULT_PARTITION }, 'the rows are still in DEFAULT')
  t.notOk((await pool.query(`SELECT to_regclass('daily_usage_2032_02') AS r`)).rows[0].r, 'no partition left half-made')
  await other.query('COMMIT')
  t.match(await ensureMonthPartition(pool, '2032-02-01', { lockTimeoutMs: 200 }), { created: true, moved: 2 })
  t.same(await homes(pool), { '2032-02-02': 'daily_usage_2032_02', '2032-02-03': 'daily_usage_2032_02' })
  await t.rejects(ensureMonthPartition(pool, '2032-03-01', { lockTimeoutMs: 0 }), RangeError)
})

t.test('dropPartitionsBefore: whole months before the cutoff are detached and dropped, nothing else', async (t) => {
  const db = await createTestDatabase(t)
  const pool = db.pool
  await addUsers(pool)
  await ensurePartitions(pool, '2024-01-01', 3)
  await pool.query(`INSERT INTO daily_usage (user_id, date) VALUES ($1, '2024-01-31'), ($1, '2024-02-01'), ($1, '2024-03-15'),
    ($1, '2024-04-30'), ($2, '2023-06-01'), ($2, '2024-03-01'), ($2, '2024-07-01')`, [A, B])
  const result = await dropPartitionsBefore(pool, '2024-03-01')
  t.same(result.dropped.map((p) => [p.name, p.from, p.to]), [
    ['daily_usage_2024_01', '2024-01-01', '2024-02-01'], ['daily_usage_2024_02', '2024-02-01', '2024-03-01'],
  ])
  t.ok(result.dropped.every((p) => p.bytes > 0), 'sizes reported')
  t.equal(result.defaultRowsDeleted, 1, "DEFAULT's row of 2023 deleted, its row of 2024-07 kept")
  t.same(Object.keys(await homes(pool)), ['2024-03-01', '2024-03-15', '2024-04-30', '2024-07-01'])
  const left = (await listPartitions(pool)).ranges.map((r) => r.name)
  t.notOk(left.includes('daily_usage_2024_01') || left.includes('daily_usage_2024_02'))
  t.ok(left.includes('daily_usage_2024_03') && left.includes(partitionName(THIS_MONTH)))
  t.same((await pool.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname IN ('daily_usage_2024_01', 'daily_usage_2024_02')`)).rows,
    [{ n: 0 }], 'dropped, not only detached')
  t.same(await dropPartitionsBefore(pool, '2024-03-01'), { dropped: [], defaultRowsDeleted: 0 }, 'a second time: nothing')
  await t.rejects(dropPartitionsBefore(pool, '2024-03-15'), RangeError, 'a cutoff is a first day')
})

t.test('month arithmetic', async (t) => {
  t.equal(monthOf('2026-12-31'), '2026-12-01')
  t.equal(addMonths('2026-12-01', 1), '2027-01-01')
  t.equal(addMonths('2026-01-01', -13), '2024-12-01')
  t.equal(addMonths('2026-05-01', 0), '2026-05-01')
  t.equal(partitionName('2027-01-01'), 'daily_usage_2027_01')
  t.throws(() => monthOf('2026-1-1'), RangeError)
  t.throws(() => addMonths('2026-05-02', 1), RangeError)
  t.throws(() => addMonths('9999-12-01', 1), RangeError)
  t.throws(() => partitionName('2026-05-02'), RangeError)
})

t.test('embedded mode (PGlite): the migration, the move and the retention', async (t) => {
  const embedded = await openEmbeddedDatabase(t.testdir())
  t.teardown(() => embedded.end())
  const pool = asPool(embedded)
  await migrate(pool)
  await embedded.refreshTypes()
  const { ranges, hasDefault } = await listPartitions(pool)
  t.ok(hasDefault)
  t.same(ranges.map((r) => r.name), [0, 1, 2, 3].map((n) => partitionName(addMonths(THIS_MONTH, n))))
  await addUsers(pool)
  const today = utcDay(Date.now())
  await pool.query(`INSERT INTO daily_usage (user_id, date, api_calls) VALUES ($1, $3, 7), ($2, $3, 9), ($1, '2020-02-02', 1)`, [A, B, today])
  t.same(await homes(pool), { '2020-02-02': DEFAULT_PARTITION, [today]: partitionName(THIS_MONTH) })
  t.match(await ensureMonthPartition(pool, '2020-02-01'), { created: true, moved: 1 })
  t.equal((await homes(pool))['2020-02-02'], 'daily_usage_2020_02')
  const top = await pool.query(TOP_USERS)
  t.same(top.rows, [{ username: 'b', deployments_created: 0, api_calls: 9 }, { username: 'a', deployments_created: 0, api_calls: 7 }])
  const dropped = await dropPartitionsBefore(pool, '2020-03-01')
  t.same(dropped.dropped.map((p) => p.name), ['daily_usage_2020_02'])
  t.same(Object.keys(await homes(pool)), [today])
  t.equal(await rollback(pool), '0006_partition_daily_usage')
  t.same((await pool.query(`SELECT count(*)::int AS n FROM daily_usage`)).rows, [{ n: 2 }], 'down keeps the rows there too')
})

/**
 * Partition pruning (docs/scaling.md): the spec's "Today's Top Users" and "Users Near Limits",
 * verbatim, touch exactly one partition of daily_usage — the current month's — however many months
 * the table holds. CURRENT_DATE is only known when the statement runs, so Postgres prunes at
 * executor start: EXPLAIN shows the one partition scanned and "Subplans Removed" for the others.
 * Run on a plain connection, as an operator's psql would; on PGlite too.
 */
import { randomUUID } from 'node:crypto'
import pg from 'pg'
import t from 'tap'
import type { Test } from 'tap'
import { utcDay } from '../../src/clock.ts'
import type { Pool } from '../../src/db/client.ts'
import { migrate } from '../../src/db/migrate.ts'
import { addMonths, ensurePartitions, listPartitions, monthOf, partitionName } from '../../src/db/partitions.ts'
import { asPool, openEmbeddedDatabase } from '../../src/db/pglite-pool.ts'
import { HISTORY, NEAR_LIMITS, TOP_USERS } from '../helpers/spec-sql.ts'
import { createTestDatabase } from '../helpers/database.ts'

type Query = (sql: string) => Promise<{ rows: Record<string, unknown>[] }>

/** Six months of history (three behind, the current one, two ahead empty), 40 users a day on five days of each. */
async function fillHistory(pool: Pool): Promise<void> {
  const thisMonth = monthOf(utcDay(Date.now()))
  await ensurePartitions(pool, addMonths(thisMonth, -3), 5)
  const users = Array.from({ length: 40 }, () => randomUUID())
  await pool.query(`INSERT INTO users (id, username, tier) SELECT id, 'u-' || id, (ARRAY['free','pro'])[1 + (n % 2)]
    FROM unnest($1::uuid[]) WITH ORDINALITY AS x(id, n)`, [users])
  for (let back = -3; back <= 0; back++) {
    const month = addMonths(thisMonth, back)
    await pool.query(
      `INSERT INTO daily_usage (user_id, date, deployments_created, api_calls)
       SELECT u, d, (n % 11)::int, (n * 137 % 6000)::int
         FROM unnest($1::uuid[]) WITH ORDINALITY AS x(u, n),
              (SELECT DISTINCT least($2::date + k, CURRENT_DATE) AS d FROM generate_series(0, 4) k) days
       ON CONFLICT (user_id, date) DO NOTHING`,
      [users, month])
  }
  await pool.query('ANALYZE daily_usage')
}

/** The daily_usage partitions a plan reads, in plan order, and how many it pruned. */
async function scanned(query: Query, sql: string): Promise<{ partitions: string[]; removed: number; plan: string }> {
  const plan = (await query(`EXPLAIN ${sql}`)).rows.map((r) => String(r['QUERY PLAN'])).join('\n')
  const partitions = [...plan.matchAll(/ on (daily_usage\w*)/g)].map((m) => m[1] ?? '')
  const removed = [...plan.matchAll(/Subplans Removed: (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0)
  return { partitions, removed, plan }
}

async function checkPruning(t: Test, pool: Pool, query: Query): Promise<void> {
  const today = partitionName(monthOf(utcDay(Date.now())))
  const { ranges, hasDefault } = await listPartitions(pool)
  const all = ranges.length + (hasDefault ? 1 : 0)
  t.ok(all >= 7, `${all} partitions to choose from`)
  for (const [name, sql] of [['Today\'s Top Users', TOP_USERS], ['Users Near Limits', NEAR_LIMITS]] as const) {
    const { partitions, removed, plan } = await scanned(query, sql)
    t.same(partitions, [today], `${name}: only ${today} is read`, { plan })
    t.equal(removed, all - 1, `${name}: the ${all - 1} others pruned`, { plan })
  }
  // "Historical Usage (Last 7 Days)" has only a lower bound: it skips every month before the last
  // week's, and reads this month's (and the previous one in a month's first week), the months
  // made ahead (empty) and DEFAULT.
  const thisMonth = monthOf(utcDay(Date.now()))
  const older = ranges.filter((r) => r.to <= addMonths(thisMonth, -1)).map((r) => r.name)
  const history = await scanned(query, HISTORY)
  t.ok(history.partitions.includes(today), `Historical Usage reads ${history.partitions.join(', ')}`, { plan: history.plan })
  t.same(history.partitions.filter((p) => older.includes(p)), [], `and none of ${older.join(', ')}`, { plan: history.plan })
  const top = await query(TOP_USERS)
  t.equal(top.rows.length, 10, 'and the query still answers')
}

t.test('Postgres: the spec\'s today queries read one partition', async (t) => {
  const db = await createTestDatabase(t)
  await fillHistory(db.pool)
  // An operator's session: a plain connection, no options.
  const psql = new pg.Client({ connectionString: db.url })
  await psql.connect()
  t.teardown(() => psql.end())
  await checkPruning(t, db.pool, (sql) => psql.query(sql))
})

t.test('PGlite: the same plans', async (t) => {
  const embedded = await openEmbeddedDatabase(t.testdir())
  t.teardown(() => embedded.end())
  const pool = asPool(embedded)
  await migrate(pool)
  await embedded.refreshTypes()
  await fillHistory(pool)
  await checkPruning(t, pool, (sql) => pool.query(sql))
})

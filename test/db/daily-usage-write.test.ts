/**
 * The flusher's write path on its own: batches passed as array literals (array-literal.ts) built
 * from column arrays (TotalsColumns). What must hold whatever the encoding:
 * - every value arrives exactly (text with separators or quotes included, decimals to the micro);
 * - the version guard: a row only ever moves forward;
 * - refused rows are isolated by bisection and named by their index; rows of deleted users skipped;
 * - writers passing rows in the one global order never deadlock, however their batches overlap.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { numberArrayLiteral, textArrayLiteral } from '../../src/db/array-literal.ts'
import { TotalsColumns, decimalText, upsertTotals, writeTotals } from '../../src/db/daily-usage.ts'
import type { DayTotals } from '../../src/db/daily-usage.ts'
import { createPool } from '../../src/db/client.ts'
import { migrate } from '../../src/db/migrate.ts'
import { asPool, openEmbeddedDatabase } from '../../src/db/pglite-pool.ts'
import { microToDecimalText } from '../../src/metrics.ts'
import { createTestDatabase } from '../helpers/database.ts'
import type { DailyUsageRow } from '../helpers/database.ts'

const DAY = '2026-11-28'

async function addUsers(pool: { query(text: string, values?: unknown[]): Promise<unknown> }, n: number): Promise<string[]> {
  const ids = Array.from({ length: n }, () => randomUUID()).sort()
  await pool.query(`INSERT INTO users (id, username, tier) SELECT u, u::text, 'free' FROM unnest($1::uuid[]) u`, [ids])
  return ids
}

const totals = (userId: string, version: number, api = version, compute = 0): DayTotals => ({
  userId, day: DAY, version, counts: { deployments: 0, api_calls: api * 1e6, compute_hours: compute, storage: 0 },
})

async function rows(pool: { query<R>(text: string): Promise<{ rows: R[] }> }): Promise<DailyUsageRow[]> {
  const { rows: out } = await pool.query<DailyUsageRow>(
    `SELECT user_id::text, date::text, deployments_created, api_calls, compute_hours::text, storage_gb::text, version
       FROM daily_usage ORDER BY user_id, date`,
  )
  return out
}

t.test('array literals: every text arrives as it was, every element in its place', async (t) => {
  const db = await createTestDatabase(t)
  const odd = ['plain', 'a,b', '{x}', 'say "hi"', 'back\\slash', '', 'NULL', 'null', ' spaced ', 'ünï', '-1.5', '2026-11-28']
  const { rows: [text] } = await db.pool.query<{ a: string[] }>('SELECT $1::text[] AS a', [textArrayLiteral(odd)])
  t.same(text?.a, odd, 'text[] round trip')
  const { rows: [picked] } = await db.pool.query<{ a: string[] }>('SELECT $1::text[] AS a', [textArrayLiteral(odd, [1, 6, 0])])
  t.same(picked?.a, ['a,b', 'NULL', 'plain'], 'rows picked by index, in that order')
  t.equal(numberArrayLiteral([3, -0, 2 ** 53 - 1]), '{3,0,9007199254740991}')
  t.equal(numberArrayLiteral([3, 4, 5], [2, 0]), '{5,3}')
  t.equal(textArrayLiteral([]), '{}')
})

t.test('decimalText writes what microToDecimalText writes, for every kind of value', async (t) => {
  const values = [0, 1, 9, 10, 100_000, 250_000, 999_999, 1_000_000, 1_000_001, 1_500_000, 123_456_789_012,
    Number.MAX_SAFE_INTEGER, -1, -1_500_000, -3_000_000, 0.5, 2 ** 60]
  for (let i = 0; i < 5000; i++) values.push(Math.floor(Math.random() * 10 ** (1 + (i % 15))))
  const differ = values.filter((v) => decimalText(v) !== microToDecimalText(v))
  t.same(differ, [])
  t.equal(decimalText(250_000), '0.25')
  t.equal(decimalText(1_000_010), '1.00001')
})

t.test('totals arrive exactly: decimals to the micro-unit, whole counts, versions', async (t) => {
  const db = await createTestDatabase(t)
  const [a, b, c] = await addUsers(db.pool, 3) as [string, string, string]
  const micro = [0, 1, 250_000, 1_500_000, 7_000_000, 123_456_789_012]
  const columns = new TotalsColumns()
  columns.add(a, DAY, { deployments: 2e6, api_calls: 3e6, compute_hours: micro[1]!, storage: micro[5]! }, 4)
  columns.add(b, DAY, { deployments: 0, api_calls: 0, compute_hours: micro[2]!, storage: micro[4]! }, 1)
  columns.add(c, DAY, { deployments: 1e6, api_calls: 2 ** 40 * 1e6, compute_hours: micro[3]!, storage: micro[0]! }, 2 ** 40)
  t.same(await writeTotals(db.pool, columns), { written: 3, rejected: [] })
  t.same(await rows(db.pool), [
    { user_id: a, date: DAY, deployments_created: 2, api_calls: 3, compute_hours: microToDecimalText(1), storage_gb: microToDecimalText(micro[5]!), version: 4 },
    { user_id: b, date: DAY, deployments_created: 0, api_calls: 0, compute_hours: '0.25', storage_gb: '7', version: 1 },
    { user_id: c, date: DAY, deployments_created: 1, api_calls: 2 ** 40, compute_hours: '1.5', storage_gb: '0', version: 2 ** 40 },
  ])
  t.equal(microToDecimalText(1), '0.000001')
})

t.test('the version guard: in one batch, older and equal versions change nothing, newer ones win', async (t) => {
  const db = await createTestDatabase(t)
  const users = await addUsers(db.pool, 4)
  t.equal(await upsertTotals(db.pool, users.map((u) => totals(u, 5))), 4)
  const before = await rows(db.pool)
  // Older, equal, newer, much newer: only the last two move.
  const result = await writeTotals(db.pool, users.map((u, i) => totals(u, [4, 5, 6, 50][i]!, 100 + i)))
  t.same(result, { written: 2, rejected: [] })
  const after = await rows(db.pool)
  t.same(after.slice(0, 2), before.slice(0, 2), 'older and equal versions: rows untouched')
  t.match(after.slice(2), [{ api_calls: 102, version: 6 }, { api_calls: 103, version: 50 }])
  t.same(await writeTotals(db.pool, users.map((u) => totals(u, 1, 0))), { written: 0, rejected: [] }, 'a late batch of old versions moves nothing back')
  t.same(await rows(db.pool), after)
})

t.test('refused rows are isolated by bisection and named by index; deleted users are skipped', async (t) => {
  const db = await createTestDatabase(t)
  await db.pool.query('ALTER TABLE daily_usage ADD CONSTRAINT test_refuse_big CHECK (api_calls < 1000)')
  const users = await addUsers(db.pool, 37)
  const refused = new Set([0, 17, 36])
  const deleted = users[20] as string
  await db.pool.query('DELETE FROM users WHERE id = $1', [deleted])
  const batch = users.map((u, i) => totals(u, 1, refused.has(i) ? 5000 : i))
  const result = await writeTotals(db.pool, TotalsColumns.of(batch))
  t.equal(result.written, 37 - refused.size - 1, 'every other row written')
  t.same(result.rejected.map((r) => r.index), [0, 17, 36], 'the refused rows, by index, in order')
  t.match(result.rejected[0]?.error, /test_refuse_big/)
  const written = await rows(db.pool)
  t.same(written.map((r) => r.user_id), users.filter((u, i) => !refused.has(i) && u !== deleted))
  t.ok(written.every((r) => r.api_calls === users.indexOf(r.user_id)), 'each row its own values')

  // A value no column can hold is refused the same way (class 22), not the batch.
  await db.pool.query('ALTER TABLE daily_usage DROP CONSTRAINT test_refuse_big')
  const bad = [totals(users[1] as string, 2, 1), totals(users[2] as string, 2, Number.NaN), totals(users[3] as string, 2, 3)]
  const r2 = await writeTotals(db.pool, bad)
  t.same(r2.rejected.map((r) => r.index), [1])
  t.equal(r2.written, 2)
})

t.test('concurrent writers in the one global order never deadlock', async (t) => {
  const db = await createTestDatabase(t)
  const users = await addUsers(db.pool, 400)
  // Two more pools: two replicas' flushers, each with two batches in flight.
  const pools = [createPool(db.url, { max: 2 }), createPool(db.url, { max: 2 })]
  t.teardown(() => Promise.all(pools.map((p) => p.end())))
  const writes: Promise<unknown>[] = []
  for (let round = 1; round <= 6; round++) {
    for (const [w, pool] of pools.entries()) {
      // Overlapping batches of different sizes and offsets, each sorted; versions interleave.
      const size = 70 + 45 * w
      for (let from = -13 * w; from < users.length; from += size) {
        const batch = users.slice(Math.max(0, from), from + size + 30).map((u) => totals(u, round * 2 + w, round))
        writes.push(writeTotals(pool, batch))
      }
    }
  }
  const settled = await Promise.allSettled(writes)
  const failures = settled.filter((s) => s.status === 'rejected').map((s) => String((s as PromiseRejectedResult).reason))
  t.same(failures, [], 'no write failed (no deadlock)')
  const final = await rows(db.pool)
  t.equal(final.length, 400)
  t.ok(final.every((r) => r.version === 13 && r.api_calls === 6), 'every row holds the newest version written')
})

t.test('embedded mode (PGlite): the same literals, the same guard and bisection', async (t) => {
  const embedded = await openEmbeddedDatabase(t.testdir())
  t.teardown(() => embedded.end())
  const pool = asPool(embedded)
  await migrate(pool)
  await embedded.refreshTypes()
  await pool.query('ALTER TABLE daily_usage ADD CONSTRAINT test_refuse_big CHECK (api_calls < 1000)')
  const users = await addUsers(pool, 6)
  const batch = users.map((u, i) => totals(u, 3, i === 4 ? 5000 : i, 250_000 * i))
  const result = await writeTotals(pool, batch)
  t.equal(result.written, 5)
  t.same(result.rejected.map((r) => r.index), [4])
  t.same(await writeTotals(pool, users.filter((_u, i) => i !== 4).map((u) => totals(u, 2, 7))), { written: 0, rejected: [] }, 'older versions: nothing moves')
  const written = await rows(pool)
  t.same(written.map((r) => [r.user_id, r.api_calls, r.compute_hours, r.version]),
    users.filter((_u, i) => i !== 4).map((u) => { const i = users.indexOf(u); return [u, i, microToDecimalText(250_000 * i), 3] }))
})

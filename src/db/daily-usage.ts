/**
 * Queries on `daily_usage`: the durable record of what was spent. Totals are written as absolute
 * values guarded by the Redis version they came from, so a repeated, late or overlapping flush
 * can never double-count nor move a row backwards.
 */
import { MAX_DECIMALS, MAX_TOTAL, MAX_TOTAL_MICRO, SCALE, microToDecimalText } from '../metrics.ts'
import type { MetricDefinition, MetricName } from '../metrics.ts'
import type { Pool } from './client.ts'

/** Micro-units per metric (storage: the gauge's value that day). */
export type UsageCounts = Record<MetricName, number>

/** One user-day's totals, with the version of the counter state they were read from. */
export interface DayTotals {
  userId: string
  day: string
  counts: UsageCounts
  version: number
}

/** A user-day as recorded, plus the latest storage gauge: what a counter store that lost it is rebuilt from. */
export interface RecordedUserDay {
  counts: UsageCounts
  /** The row's version (0 without a row). */
  version: number
  /** The latest storage_gb recorded up to that day. */
  gauge: number
}

interface SeedRow {
  deployments_created: string | null
  api_calls: string | null
  compute_hours: string | null
  storage_gb: string | null
  version: number | null
  gauge: string | null
}

/** Told when a recorded value had to be read as something else (see recordedToMicro). */
export type RecordedValueWarning = (detail: { userId: string; day: string; column: string; stored: string; used: number }) => void

const RECORDED_DECIMAL = /^(-?)(\d+)(?:\.(\d+))?$/

/**
 * A value of daily_usage as stored (numeric or bigint, as text) to micro-units, for any value
 * Postgres can hold: the rebuilt counters must never fail to load, or every call of that user
 * fails (and so does a global reset) until someone edits the row by hand. Values a counter can
 * never reach are read as the nearest one it can: above MAX_TOTAL (written by hand, or by a
 * release without the ceiling) as MAX_TOTAL, negative or -Infinity as 0, NaN and Infinity as
 * MAX_TOTAL, a 7th decimal rounded up. Each reading errs towards more usage, never less: state
 * lost in Redis must not give a user fresh quota. Returns the micro-units and whether the value
 * was read as stored.
 */
export function recordedToMicro(text: string): { micro: number; exact: boolean } {
  const match = RECORDED_DECIMAL.exec(text.trim())
  if (!match) return { micro: /^-inf/i.test(text.trim()) ? 0 : MAX_TOTAL_MICRO, exact: false }
  const [, sign, whole = '0', frac = ''] = match
  if (sign === '-' && /[1-9]/.test(whole + frac)) return { micro: 0, exact: false }
  const wholeDigits = whole.replace(/^0+(?=\d)/, '')
  // Compared as text first: Number() of a 30-digit whole part would already have rounded.
  if (wholeDigits.length > String(MAX_TOTAL).length) return { micro: MAX_TOTAL_MICRO, exact: false }
  const fracDigits = frac.replace(/0+$/, '')
  let micro = Number(wholeDigits) * SCALE + Number(fracDigits.slice(0, MAX_DECIMALS).padEnd(MAX_DECIMALS, '0'))
  let exact = true
  if (fracDigits.length > MAX_DECIMALS) {
    micro += 1
    exact = false
  }
  if (micro > MAX_TOTAL_MICRO) return { micro: MAX_TOTAL_MICRO, exact: false }
  return { micro, exact }
}

/**
 * A user-day as Postgres has it, plus the latest storage gauge, to rebuild counters after data
 * loss. Never throws for a stored value (see recordedToMicro); `warn` hears of each value read
 * otherwise than stored.
 */
export async function loadRecordedUserDay(
  pool: Pool, userId: string, day: string, warn?: RecordedValueWarning,
): Promise<RecordedUserDay> {
  const { rows } = await pool.query<SeedRow>(
    `SELECT t.deployments_created::text AS deployments_created, t.api_calls::text AS api_calls,
            t.compute_hours::text AS compute_hours, t.storage_gb::text AS storage_gb, t.version,
            g.storage_gb::text AS gauge
       FROM (SELECT 1) AS one
       LEFT JOIN daily_usage t ON t.user_id = $1 AND t.date = $2
       LEFT JOIN LATERAL (
         SELECT storage_gb FROM daily_usage WHERE user_id = $1 AND date <= $2 ORDER BY date DESC LIMIT 1
       ) g ON true`,
    [userId, day],
  )
  const row = rows[0]
  const read = (column: string, text: string | null | undefined): number => {
    if (text === null || text === undefined) return 0
    const { micro, exact } = recordedToMicro(text)
    if (!exact) warn?.({ userId, day, column, stored: text.slice(0, 64), used: micro })
    return micro
  }
  const gauge = read('storage_gb (latest)', row?.gauge)
  return {
    counts: {
      deployments: read('deployments_created', row?.deployments_created),
      api_calls: read('api_calls', row?.api_calls),
      compute_hours: read('compute_hours', row?.compute_hours),
      storage: row?.storage_gb ? read('storage_gb', row.storage_gb) : gauge,
    },
    version: row?.version ?? 0,
    gauge,
  }
}

/** Postgres' foreign_key_violation. */
const FOREIGN_KEY_VIOLATION = '23503'

const UPSERT_TOTALS = `INSERT INTO daily_usage AS du
         (user_id, date, deployments_created, api_calls, compute_hours, storage_gb, version, updated_at)
  SELECT t.u, t.d, t.dep, t.api, t.ch::numeric, t.st::numeric, t.v, now()
    FROM unnest($1::uuid[], $2::date[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::bigint[])
         AS t(u, d, dep, api, ch, st, v)
  ON CONFLICT (user_id, date) DO UPDATE SET
    deployments_created = EXCLUDED.deployments_created,
    api_calls = EXCLUDED.api_calls,
    compute_hours = EXCLUDED.compute_hours,
    storage_gb = EXCLUDED.storage_gb,
    version = EXCLUDED.version,
    updated_at = EXCLUDED.updated_at
  WHERE du.version < EXCLUDED.version`

async function insertTotals(pool: Pool, rows: readonly DayTotals[]): Promise<number> {
  const ids: string[] = [], days: string[] = [], dep: number[] = [], api: number[] = []
  const compute: string[] = [], storage: string[] = [], versions: number[] = []
  for (const r of rows) {
    ids.push(r.userId)
    days.push(r.day)
    dep.push(Math.round(r.counts.deployments / SCALE))
    api.push(Math.round(r.counts.api_calls / SCALE))
    compute.push(microToDecimalText(r.counts.compute_hours))
    storage.push(microToDecimalText(r.counts.storage))
    versions.push(r.version)
  }
  const result = await pool.query(UPSERT_TOTALS, [ids, days, dep, api, compute, storage, versions])
  return result.rowCount ?? 0
}

/**
 * Writes absolute totals in one statement. A row is only overwritten by a newer version, so
 * flushers on several replicas may race freely; callers pass rows in one global order
 * (the flusher sorts them) so concurrent batches lock rows in the same order and never deadlock.
 *
 * Users missing from `users` (deleted meanwhile) are skipped rather than failing the batch
 * forever. The common case pays nothing for that: the foreign key already checks every new row,
 * and only when it fails are the missing users looked up (by primary key) and left out. (A JOIN
 * on `users` in the statement made Postgres hash the whole users table for every batch: the cost
 * of a flush grew with the number of users instead of the number of changed rows.)
 */
export async function upsertTotals(pool: Pool, rows: readonly DayTotals[]): Promise<number> {
  if (rows.length === 0) return 0
  let pending = rows
  for (let attempt = 1; ; attempt++) {
    try {
      return await insertTotals(pool, pending)
    } catch (err) {
      if ((err as { code?: string }).code !== FOREIGN_KEY_VIOLATION || attempt >= 3) throw err
    }
    const { rows: known } = await pool.query<{ id: string }>(
      'SELECT id::text FROM users WHERE id = ANY($1::uuid[])',
      [[...new Set(pending.map((r) => r.userId))]],
    )
    const present = new Set(known.map((k) => k.id))
    pending = pending.filter((r) => present.has(r.userId))
    if (pending.length === 0) return 0
  }
}

export interface WriteResult {
  /** Rows inserted or updated. */
  written: number
  /** Rows Postgres refused, with its reason; every other row of the batch was written. */
  rejected: { row: DayTotals; error: string }[]
}

/**
 * Whether Postgres refused the data itself (a value out of range, a constraint), as opposed to
 * not being there (connection, shutdown, timeout) — SQLSTATE classes 22 and 23.
 */
function refusesData(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'))
}

/**
 * upsertTotals for the flusher: a row Postgres refuses must not hold back the others. When the
 * statement fails on the data, the batch is split in halves until the refused rows are isolated;
 * the rest is written, the refused rows are returned. Any other error (Postgres unreachable) is
 * thrown: nothing of the batch is assumed written.
 */
export async function writeTotals(pool: Pool, rows: readonly DayTotals[]): Promise<WriteResult> {
  try {
    return { written: await upsertTotals(pool, rows), rejected: [] }
  } catch (err) {
    if (!refusesData(err)) throw err
    if (rows.length === 1) return { written: 0, rejected: [{ row: rows[0] as DayTotals, error: (err as Error).message }] }
    const half = Math.ceil(rows.length / 2)
    const a = await writeTotals(pool, rows.slice(0, half))
    const b = await writeTotals(pool, rows.slice(half))
    return { written: a.written + b.written, rejected: [...a.rejected, ...b.rejected] }
  }
}

/** A usage column of daily_usage, as the metric registry names it. */
export type UsageColumn = MetricDefinition['column']

/** Zeroes columns of a day's rows (one user, or everyone). Returns the rows changed. */
export async function zeroColumns(
  pool: Pool,
  day: string,
  userId: string | null,
  columns: readonly UsageColumn[],
): Promise<number> {
  if (columns.length === 0) return 0
  const sets = columns.map((c) => `${c} = 0`).join(', ')
  const result = userId === null
    ? await pool.query(`UPDATE daily_usage SET ${sets}, updated_at = now() WHERE date = $1`, [day])
    : await pool.query(`UPDATE daily_usage SET ${sets}, updated_at = now() WHERE date = $1 AND user_id = $2`, [day, userId])
  return result.rowCount ?? 0
}

/** Users with a row for `day`. */
export async function activeUserIds(pool: Pool, day: string): Promise<string[]> {
  const { rows } = await pool.query<{ user_id: string }>('SELECT user_id::text FROM daily_usage WHERE date = $1', [day])
  return rows.map((r) => r.user_id)
}

/**
 * The midnight carry-over: the storage gauge continues into `nextDay` (a row holding the closed
 * day's storage, unless the new day already has one). Returns the rows created.
 */
export async function carryStorageForward(pool: Pool, day: string, nextDay: string): Promise<number> {
  const result = await pool.query(
    `INSERT INTO daily_usage (user_id, date, storage_gb, version, updated_at)
     SELECT user_id, $2::date, storage_gb, 0, now() FROM daily_usage WHERE date = $1 AND storage_gb > 0
     ON CONFLICT (user_id, date) DO NOTHING`,
    [day, nextDay],
  )
  return result.rowCount ?? 0
}

/** Rows (users) recorded for `day`. */
export async function countUsersOfDay(pool: Pool, day: string): Promise<number> {
  const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM daily_usage WHERE date = $1', [day])
  return rows[0]?.n ?? 0
}

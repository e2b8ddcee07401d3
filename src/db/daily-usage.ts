/**
 * Queries on `daily_usage`: the durable record of what was spent. Totals are written as absolute
 * values guarded by the Redis version they came from, so a repeated, late or overlapping flush
 * can never double-count nor move a row backwards.
 */
import { MAX_DECIMALS, MAX_TOTAL, MAX_TOTAL_MICRO, SCALE, microToDecimalText } from '../metrics.ts'
import type { MetricDefinition, MetricName } from '../metrics.ts'
import { numberArrayLiteral, textArrayLiteral } from './array-literal.ts'
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

// Every column is one array literal (see array-literal.ts); compute and storage arrive as exact
// decimal text, which the numeric[] cast reads without rounding.
const UPSERT_TOTALS = `INSERT INTO daily_usage AS du
         (user_id, date, deployments_created, api_calls, compute_hours, storage_gb, version, updated_at)
  SELECT t.u, t.d, t.dep, t.api, t.ch, t.st, t.v, now()
    FROM unnest($1::uuid[], $2::date[], $3::bigint[], $4::bigint[], $5::numeric[], $6::numeric[], $7::bigint[])
         AS t(u, d, dep, api, ch, st, v)
  ON CONFLICT (user_id, date) DO UPDATE SET
    deployments_created = EXCLUDED.deployments_created,
    api_calls = EXCLUDED.api_calls,
    compute_hours = EXCLUDED.compute_hours,
    storage_gb = EXCLUDED.storage_gb,
    version = EXCLUDED.version,
    updated_at = EXCLUDED.updated_at
  WHERE du.version < EXCLUDED.version`

/**
 * microToDecimalText without its regex and padding for the values a flush writes (non-negative
 * safe integers), two per row; anything else takes the general path. 250000 -> "0.25".
 */
export function decimalText(micro: number): string {
  if (micro % SCALE === 0) return String(micro / SCALE)
  if (micro < 0 || !Number.isSafeInteger(micro)) return microToDecimalText(micro)
  let frac = micro % SCALE
  let digits = MAX_DECIMALS
  while (frac % 10 === 0) {
    frac /= 10
    digits--
  }
  const text = String(frac)
  return `${Math.floor(micro / SCALE)}.${'0'.repeat(digits - text.length)}${text}`
}

/**
 * A batch of user-day totals as the statement's columns, filled row by row without an object per
 * row. Rows are written in the order they were added: callers add them in the one global order
 * (see upsertTotals).
 */
export class TotalsColumns {
  readonly userIds: string[] = []
  readonly days: string[] = []
  /** Whole deployments and API calls (the columns are bigint). */
  readonly deployments: number[] = []
  readonly apiCalls: number[] = []
  /** Exact decimal text of compute hours and storage GB. */
  readonly computeHours: string[] = []
  readonly storage: string[] = []
  readonly versions: number[] = []

  get length(): number {
    return this.userIds.length
  }

  add(userId: string, day: string, counts: UsageCounts, version: number): void {
    this.userIds.push(userId)
    this.days.push(day)
    this.deployments.push(Math.round(counts.deployments / SCALE))
    this.apiCalls.push(Math.round(counts.api_calls / SCALE))
    this.computeHours.push(decimalText(counts.compute_hours))
    this.storage.push(decimalText(counts.storage))
    this.versions.push(version)
  }

  static of(rows: readonly DayTotals[]): TotalsColumns {
    const columns = new TotalsColumns()
    for (const r of rows) columns.add(r.userId, r.day, r.counts, r.version)
    return columns
  }
}

/** Rows `at` of `columns` (indexes, in order; every row when undefined): one INSERT. */
async function insertTotals(pool: Pool, columns: TotalsColumns, at?: readonly number[]): Promise<number> {
  const result = await pool.query(UPSERT_TOTALS, [
    textArrayLiteral(columns.userIds, at),
    textArrayLiteral(columns.days, at),
    numberArrayLiteral(columns.deployments, at),
    numberArrayLiteral(columns.apiCalls, at),
    textArrayLiteral(columns.computeHours, at),
    textArrayLiteral(columns.storage, at),
    numberArrayLiteral(columns.versions, at),
  ])
  return result.rowCount ?? 0
}

/** 0..n-1. */
function allRows(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i)
}

/**
 * upsertTotals on rows `at` of `columns`. Users missing from `users` (deleted meanwhile) are
 * skipped rather than failing the batch forever. The common case pays nothing for that: the
 * foreign key already checks every new row, and only when it fails are the missing users looked
 * up (by primary key) and left out. (A JOIN on `users` in the statement made Postgres hash the
 * whole users table for every batch: the cost of a flush grew with the number of users instead
 * of the number of changed rows.)
 */
async function upsertRows(pool: Pool, columns: TotalsColumns, at?: readonly number[]): Promise<number> {
  let pending = at
  for (let attempt = 1; ; attempt++) {
    try {
      return await insertTotals(pool, columns, pending)
    } catch (err) {
      if ((err as { code?: string }).code !== FOREIGN_KEY_VIOLATION || attempt >= 3) throw err
    }
    const rows = pending ?? allRows(columns.length)
    const { rows: known } = await pool.query<{ id: string }>(
      'SELECT id::text FROM users WHERE id = ANY($1::uuid[])',
      [[...new Set(rows.map((i) => columns.userIds[i] as string))]],
    )
    const present = new Set(known.map((k) => k.id))
    pending = rows.filter((i) => present.has(columns.userIds[i] as string))
    if (pending.length === 0) return 0
  }
}

/**
 * Writes absolute totals in one statement. A row is only overwritten by a newer version, so
 * flushers on several replicas may race freely; callers pass rows in one global order
 * (the flusher sorts them) so concurrent batches lock rows in the same order and never deadlock.
 * Rows of users deleted meanwhile are skipped (see upsertRows).
 */
export async function upsertTotals(pool: Pool, rows: readonly DayTotals[] | TotalsColumns): Promise<number> {
  const columns = rows instanceof TotalsColumns ? rows : TotalsColumns.of(rows)
  if (columns.length === 0) return 0
  return upsertRows(pool, columns)
}

export interface WriteResult {
  /** Rows inserted or updated. */
  written: number
  /** Rows Postgres refused (indexes into the batch, ascending), with its reason; every other row was written. */
  rejected: { index: number; error: string }[]
}

/**
 * Whether Postgres refused the data itself (a value out of range, a constraint), as opposed to
 * not being there (connection, shutdown, timeout) — SQLSTATE classes 22 and 23.
 */
function refusesData(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'))
}

async function writeRows(pool: Pool, columns: TotalsColumns, at: readonly number[] | undefined): Promise<WriteResult> {
  try {
    return { written: await upsertRows(pool, columns, at), rejected: [] }
  } catch (err) {
    if (!refusesData(err)) throw err
    const rows = at ?? allRows(columns.length)
    if (rows.length === 1) return { written: 0, rejected: [{ index: rows[0] as number, error: (err as Error).message }] }
    const half = Math.ceil(rows.length / 2)
    const a = await writeRows(pool, columns, rows.slice(0, half))
    const b = await writeRows(pool, columns, rows.slice(half))
    return { written: a.written + b.written, rejected: [...a.rejected, ...b.rejected] }
  }
}

/**
 * upsertTotals for the flusher: a row Postgres refuses must not hold back the others. When the
 * statement fails on the data, the batch is split in halves until the refused rows are isolated;
 * the rest is written, the refused rows are returned. Any other error (Postgres unreachable) is
 * thrown: nothing of the batch is assumed written.
 */
export async function writeTotals(pool: Pool, rows: readonly DayTotals[] | TotalsColumns): Promise<WriteResult> {
  const columns = rows instanceof TotalsColumns ? rows : TotalsColumns.of(rows)
  if (columns.length === 0) return { written: 0, rejected: [] }
  return writeRows(pool, columns, undefined)
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

/**
 * `daily_usage`'s monthly partitions (docs/scaling.md, "History at scale"). Migration 0006 made
 * the table range-partitioned on `date`: one partition per UTC month, `daily_usage_YYYY_MM`
 * holding [YYYY-MM-01, next month's 01), and a DEFAULT partition, `daily_usage_default`, that
 * takes a row whose month has no partition yet, so a write never fails for a missing month.
 *
 * The leader makes the coming months' partitions ahead of time (persistence/partition-keeper.ts)
 * and, with HISTORY_RETENTION_MONTHS, drops the oldest. Both are DDL: each change takes its lock on
 * daily_usage in a short transaction with a lock timeout, so a long report holding the table makes
 * it give up and retry later rather than queue every flush behind it.
 */
import type { Pool, PoolClient } from './client.ts'

export const DAILY_USAGE = 'daily_usage'
export const DEFAULT_PARTITION = 'daily_usage_default'

/** How long a partition change waits for each lock it needs before giving up, ms. */
export const LOCK_TIMEOUT_MS = 5000

export interface PartitionChangeOptions {
  /** How long each change waits for a lock (daily_usage; users, for the foreign key) before giving up, ms. @default 5000 */
  lockTimeoutMs?: number
}

const MONTH = /^(\d{4})-(\d{2})-01$/
const DAY = /^(\d{4})-(\d{2})-\d{2}$/
const RANGE_BOUND = /^FOR VALUES FROM \('(\d{4}-\d{2}-\d{2})'\) TO \('(\d{4}-\d{2}-\d{2})'\)$/

/** The first day of `day`'s month: '2026-12-02' -> '2026-12-01'. */
export function monthOf(day: string): string {
  const match = DAY.exec(day)
  if (!match) throw new RangeError(`not a YYYY-MM-DD day: ${day}`)
  return `${match[1]}-${match[2]}-01`
}

/** The first day of the month `n` months after `month` (a first day); `n` may be negative. */
export function addMonths(month: string, n: number): string {
  const match = MONTH.exec(month)
  if (!match) throw new RangeError(`not the first day of a month: ${month}`)
  const index = Number(match[1]) * 12 + Number(match[2]) - 1 + n
  const year = Math.floor(index / 12)
  if (year < 1 || year > 9999) throw new RangeError(`month out of range: ${month} + ${n}`)
  return `${String(year).padStart(4, '0')}-${String((index % 12) + 1).padStart(2, '0')}-01`
}

/** The partition of `month`: '2026-12-01' -> 'daily_usage_2026_12'. */
export function partitionName(month: string): string {
  if (!MONTH.test(month)) throw new RangeError(`not the first day of a month: ${month}`)
  return `${DAILY_USAGE}_${month.slice(0, 7).replace('-', '_')}`
}

function ident(name: string): string {
  return `"${name.replace(/"/g, '""')}"`
}

/** A partition with a date range: rows with from <= date < to. */
export interface RangePartition {
  name: string
  from: string
  to: string
}

export interface Partitions {
  /** Range partitions by their lower bound. */
  ranges: RangePartition[]
  /** Whether the DEFAULT partition exists. */
  hasDefault: boolean
}

/** daily_usage's partitions, read from the catalog (names and bounds as Postgres has them). */
export async function listPartitions(pool: Pool | PoolClient): Promise<Partitions> {
  const { rows } = await pool.query<{ name: string; bound: string }>(
    `SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
      WHERE i.inhparent = to_regclass($1)`,
    [DAILY_USAGE],
  )
  const ranges: RangePartition[] = []
  let hasDefault = false
  for (const { name, bound } of rows) {
    if (bound === 'DEFAULT') hasDefault = true
    const match = RANGE_BOUND.exec(bound)
    // A partition made by hand with MINVALUE/MAXVALUE bounds is left alone.
    if (match?.[1] && match[2]) ranges.push({ name, from: match[1], to: match[2] })
  }
  ranges.sort((a, b) => (a.from < b.from ? -1 : a.from > b.from ? 1 : 0))
  return { ranges, hasDefault }
}

async function inTransaction<T>(pool: Pool, options: PartitionChangeOptions, fn: (client: PoolClient) => Promise<T>): Promise<T> {
  const lockTimeoutMs = options.lockTimeoutMs ?? LOCK_TIMEOUT_MS
  if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 1) throw new RangeError(`lockTimeoutMs must be a whole number >= 1, got ${lockTimeoutMs}`)
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    // A literal: SET takes no parameters.
    await client.query(`SET LOCAL lock_timeout = ${lockTimeoutMs}`)
    const result = await fn(client)
    await client.query('COMMIT')
    return result
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {})
    throw err
  } finally {
    client.release()
  }
}

export interface EnsuredPartition {
  month: string
  name: string
  /** False when a partition already covered the month. */
  created: boolean
  /** Rows of that month moved out of the DEFAULT partition into the new one. */
  moved: number
}

/**
 * Makes sure `month` (a first day) has its partition. Idempotent. Rows of that month that landed
 * in the DEFAULT partition meanwhile are moved into the new partition in the same transaction:
 * Postgres refuses a partition whose range has rows in the DEFAULT one. The transaction holds
 * daily_usage exclusively for the few statements it takes (the DEFAULT partition normally holds
 * nothing).
 */
export async function ensureMonthPartition(pool: Pool, month: string, options: PartitionChangeOptions = {}): Promise<EnsuredPartition> {
  const name = partitionName(month)
  const to = addMonths(month, 1)
  const covered = (p: Partitions) => p.ranges.some((r) => r.from < to && r.to > month)
  if (covered(await listPartitions(pool))) return { month, name, created: false, moved: 0 }

  return inTransaction(pool, options, async (client) => {
    // Before reading the DEFAULT partition: no write may land there between the read and the DDL.
    await client.query(`LOCK TABLE ${ident(DAILY_USAGE)} IN ACCESS EXCLUSIVE MODE`)
    const now = await listPartitions(client)
    if (covered(now)) return { month, name, created: false, moved: 0 }
    const bounds = `FOR VALUES FROM ('${month}') TO ('${to}')`
    const { rows } = now.hasDefault
      ? await client.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${ident(DEFAULT_PARTITION)} WHERE date >= $1 AND date < $2`, [month, to])
      : { rows: [{ n: 0 }] }
    const waiting = rows[0]?.n ?? 0
    if (waiting === 0) {
      await client.query(`CREATE TABLE IF NOT EXISTS ${ident(name)} PARTITION OF ${ident(DAILY_USAGE)} ${bounds}`)
      // IF NOT EXISTS skips a table of that name that is no partition (left by hand): say so, loudly.
      if (!covered(await listPartitions(client))) throw new Error(`${name} exists but is not a partition of ${DAILY_USAGE}`)
      return { month, name, created: true, moved: 0 }
    }
    // The month's rows move into a plain table first, which then becomes the partition.
    await client.query(`CREATE TABLE ${ident(name)} (LIKE ${ident(DAILY_USAGE)} INCLUDING DEFAULTS)`)
    const moved = await client.query(
      `WITH moved AS (DELETE FROM ${ident(DEFAULT_PARTITION)} WHERE date >= $1 AND date < $2 RETURNING *)
       INSERT INTO ${ident(name)} SELECT * FROM moved`,
      [month, to],
    )
    await client.query(`ALTER TABLE ${ident(DAILY_USAGE)} ATTACH PARTITION ${ident(name)} ${bounds}`)
    return { month, name, created: true, moved: moved.rowCount ?? 0 }
  })
}

/** Makes sure `first` (a first day) and the `ahead` months after it have their partitions. */
export async function ensurePartitions(
  pool: Pool, first: string, ahead: number, options: PartitionChangeOptions = {},
): Promise<EnsuredPartition[]> {
  const done: EnsuredPartition[] = []
  for (let n = 0; n <= ahead; n++) done.push(await ensureMonthPartition(pool, addMonths(first, n), options))
  return done
}

export interface DroppedPartition extends RangePartition {
  /** Postgres' estimate of its rows (pg_class.reltuples; -1 if never analysed). Counting would read it all. */
  estimatedRows: number
  /** Its size with indexes, bytes. */
  bytes: number
}

export interface RetentionResult {
  dropped: DroppedPartition[]
  /** Rows older than the cutoff deleted from the DEFAULT partition. */
  defaultRowsDeleted: number
}

/**
 * Drops every range partition that ends on or before `cutoff` (a first day): each is detached,
 * then dropped, in its own transaction. Rows before `cutoff` in the DEFAULT partition are deleted.
 * A partition that reaches `cutoff` or later is kept whole.
 */
export async function dropPartitionsBefore(pool: Pool, cutoff: string, options: PartitionChangeOptions = {}): Promise<RetentionResult> {
  if (!MONTH.test(cutoff)) throw new RangeError(`not the first day of a month: ${cutoff}`)
  const { ranges, hasDefault } = await listPartitions(pool)
  const dropped: DroppedPartition[] = []
  for (const partition of ranges.filter((r) => r.to <= cutoff)) {
    const result = await inTransaction(pool, options, async (client) => {
      const { rows } = await client.query<{ rows: number; bytes: number }>(
        `SELECT reltuples::bigint AS rows, pg_total_relation_size(oid) AS bytes FROM pg_class WHERE oid = to_regclass($1)`,
        [ident(partition.name)],
      )
      const stats = rows[0]
      if (!stats) return undefined // dropped meanwhile
      await client.query(`ALTER TABLE ${ident(DAILY_USAGE)} DETACH PARTITION ${ident(partition.name)}`)
      await client.query(`DROP TABLE ${ident(partition.name)}`)
      return { ...partition, estimatedRows: stats.rows, bytes: stats.bytes }
    })
    if (result) dropped.push(result)
  }
  let defaultRowsDeleted = 0
  if (hasDefault) {
    const deleted = await pool.query(`DELETE FROM ${ident(DEFAULT_PARTITION)} WHERE date < $1`, [cutoff])
    defaultRowsDeleted = deleted.rowCount ?? 0
  }
  return { dropped, defaultRowsDeleted }
}

/**
 * Queries on `daily_usage`: the durable record of what was spent. Totals are written as absolute
 * values guarded by the Redis version they came from, so a repeated, late or overlapping flush
 * can never double-count nor move a row backwards.
 */
import type { SeedState } from '../counters/redis-store.ts'
import { SCALE, decimalTextToMicro, microToDecimalText } from '../metrics.ts'
import type { Pool } from './client.ts'

/** One user-day's totals in micro-units, with the version of the Redis state they were read from. */
export interface DayTotals {
  userId: string
  day: string
  d: number
  a: number
  c: number
  s: number
  version: number
}

interface SeedRow {
  deployments_created: number | null
  api_calls: number | null
  compute_hours: string | null
  storage_gb: string | null
  version: number | null
  gauge: string | null
}

/** A user-day as Postgres has it, plus the latest storage gauge, to rebuild Redis after data loss. */
export async function loadSeedState(pool: Pool, userId: string, day: string): Promise<SeedState> {
  const { rows } = await pool.query<SeedRow>(
    `SELECT t.deployments_created, t.api_calls, t.compute_hours::text AS compute_hours,
            t.storage_gb::text AS storage_gb, t.version, g.storage_gb::text AS gauge
       FROM (SELECT 1) AS one
       LEFT JOIN daily_usage t ON t.user_id = $1 AND t.date = $2
       LEFT JOIN LATERAL (
         SELECT storage_gb FROM daily_usage WHERE user_id = $1 AND date <= $2 ORDER BY date DESC LIMIT 1
       ) g ON true`,
    [userId, day],
  )
  const row = rows[0]
  const gauge = row?.gauge ? decimalTextToMicro(row.gauge) : 0
  return {
    d: (row?.deployments_created ?? 0) * SCALE,
    a: (row?.api_calls ?? 0) * SCALE,
    c: row?.compute_hours ? decimalTextToMicro(row.compute_hours) : 0,
    s: row?.storage_gb ? decimalTextToMicro(row.storage_gb) : gauge,
    version: row?.version ?? 0,
    gauge,
  }
}

/**
 * Writes absolute totals in one statement. A row is only overwritten by a newer version, so
 * flushers on several replicas may race freely. Users missing from `users` (deleted meanwhile)
 * are skipped rather than failing the batch forever.
 */
export async function upsertTotals(pool: Pool, rows: readonly DayTotals[]): Promise<number> {
  if (rows.length === 0) return 0
  const ids: string[] = [], days: string[] = [], dep: number[] = [], api: number[] = []
  const compute: string[] = [], storage: string[] = [], versions: number[] = []
  for (const r of rows) {
    ids.push(r.userId)
    days.push(r.day)
    dep.push(Math.round(r.d / SCALE))
    api.push(Math.round(r.a / SCALE))
    compute.push(microToDecimalText(r.c))
    storage.push(microToDecimalText(r.s))
    versions.push(r.version)
  }
  const result = await pool.query(
    `INSERT INTO daily_usage AS du
            (user_id, date, deployments_created, api_calls, compute_hours, storage_gb, version, updated_at)
     SELECT t.u, t.d, t.dep, t.api, t.ch::numeric, t.st::numeric, t.v, now()
       FROM unnest($1::uuid[], $2::date[], $3::int[], $4::int[], $5::text[], $6::text[], $7::bigint[])
            AS t(u, d, dep, api, ch, st, v)
       JOIN users ON users.id = t.u
     ON CONFLICT (user_id, date) DO UPDATE SET
       deployments_created = EXCLUDED.deployments_created,
       api_calls = EXCLUDED.api_calls,
       compute_hours = EXCLUDED.compute_hours,
       storage_gb = EXCLUDED.storage_gb,
       version = EXCLUDED.version,
       updated_at = EXCLUDED.updated_at
     WHERE du.version < EXCLUDED.version`,
    [ids, days, dep, api, compute, storage, versions],
  )
  return result.rowCount ?? 0
}

export type UsageColumn = 'deployments_created' | 'api_calls' | 'compute_hours' | 'storage_gb'

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

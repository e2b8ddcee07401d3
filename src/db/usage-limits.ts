/**
 * Queries on `usage_limits`: one row per tier (DESIGN 1.6), NULL = unlimited. Numerics come back
 * as exact decimal text (pg's default for numeric), never floats.
 */
import type { Pool } from './client.ts'
import { UnknownTierError } from './errors.ts'

/** A row of usage_limits as stored: integers as numbers, numerics as exact decimal text, NULL = unlimited. */
export interface TierLimitsRow {
  tier: string
  max_deployments_per_day: number | null
  max_api_calls_per_day: number | null
  max_compute_hours_per_day: string | null
  max_storage_gb: string | null
}

export type LimitColumn = Exclude<keyof TierLimitsRow, 'tier'>

const LIMIT_COLUMNS: readonly LimitColumn[] = [
  'max_deployments_per_day', 'max_api_calls_per_day', 'max_compute_hours_per_day', 'max_storage_gb',
]

const SELECT_LIMITS = `SELECT tier, ${LIMIT_COLUMNS.join(', ')} FROM usage_limits`

/** Every tier's limits, ordered by tier name. */
export async function listLimits(pool: Pool): Promise<TierLimitsRow[]> {
  const { rows } = await pool.query<TierLimitsRow>(`${SELECT_LIMITS} ORDER BY tier`)
  return rows
}

/**
 * Updates some limits of an existing tier (`null` = unlimited; absent = unchanged). Values are
 * passed as text so numerics stay exact. Throws UnknownTierError when the tier does not exist.
 */
export async function updateLimits(
  pool: Pool,
  tier: string,
  limits: Partial<Record<LimitColumn, number | string | null>>,
): Promise<TierLimitsRow> {
  const columns = LIMIT_COLUMNS.filter((c) => limits[c] !== undefined)
  const values = columns.map((c) => {
    const v = limits[c]
    return v === null || v === undefined ? null : String(v)
  })
  const sets = columns.map((c, i) => `${c} = $${i + 2}`)
  // Touch updated_at even for an empty change, so the row is returned (and the NOTIFY fires).
  sets.push('updated_at = now()')
  const { rows } = await pool.query<TierLimitsRow>(
    `UPDATE usage_limits SET ${sets.join(', ')} WHERE tier = $1 RETURNING tier, ${LIMIT_COLUMNS.join(', ')}`,
    [tier, ...values],
  )
  const row = rows[0]
  if (!row) throw new UnknownTierError(tier)
  return row
}

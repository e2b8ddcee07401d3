/**
 * Queries on `usage_limits`: one row per tier, NULL = unlimited. Numerics come back as exact
 * decimal text (drizzle's and pg's form of numeric), never floats.
 */
import { asc, eq, sql } from 'drizzle-orm'
import type { Pool } from './client.ts'
import { UnknownTierError } from './errors.ts'
import { queryBuilder } from './query-builder.ts'
import { usageLimits } from './schema.ts'

/** A row of usage_limits as stored: integers as numbers, numerics as exact decimal text, NULL = unlimited. */
export interface TierLimitsRow {
  tier: string
  max_deployments_per_day: number | null
  max_api_calls_per_day: number | null
  max_compute_hours_per_day: string | null
  max_storage_gb: string | null
}

export type LimitColumn = Exclude<keyof TierLimitsRow, 'tier'>

/** The row as the API and the limits cache name its columns (the table's own names). */
const ROW = {
  tier: usageLimits.tier,
  max_deployments_per_day: usageLimits.maxDeploymentsPerDay,
  max_api_calls_per_day: usageLimits.maxApiCallsPerDay,
  max_compute_hours_per_day: usageLimits.maxComputeHoursPerDay,
  max_storage_gb: usageLimits.maxStorageGb,
}

/** Every tier's limits, ordered by tier name. */
export async function listLimits(pool: Pool): Promise<TierLimitsRow[]> {
  return queryBuilder(pool).select(ROW).from(usageLimits).orderBy(asc(usageLimits.tier))
}

/**
 * Updates some limits of an existing tier (`null` = unlimited; absent = unchanged). Numerics are
 * passed as text so they stay exact. Throws UnknownTierError when the tier does not exist.
 */
export async function updateLimits(
  pool: Pool,
  tier: string,
  limits: Partial<Record<LimitColumn, number | string | null>>,
): Promise<TierLimitsRow> {
  const integer = (v: number | string | null | undefined): number | null | undefined => (v === null || v === undefined ? v : Number(v))
  const decimal = (v: number | string | null | undefined): string | null | undefined => (v === null || v === undefined ? v : String(v))
  const rows = await queryBuilder(pool).update(usageLimits).set({
    maxDeploymentsPerDay: integer(limits.max_deployments_per_day),
    maxApiCallsPerDay: integer(limits.max_api_calls_per_day),
    maxComputeHoursPerDay: decimal(limits.max_compute_hours_per_day),
    maxStorageGb: decimal(limits.max_storage_gb),
    // Touched even for an empty change, so the row is returned (and the NOTIFY fires).
    updatedAt: sql`now()`,
  }).where(eq(usageLimits.tier, tier)).returning(ROW)
  const row = rows[0]
  if (!row) throw new UnknownTierError(tier)
  return row
}

/**
 * Reading tier limits from `usage_limits` into micro-units per metric (null = unlimited).
 */
import { METRIC_NAMES, METRICS, limitToMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import type { Pool } from '../db/client.ts'

export type TierLimits = Readonly<Record<MetricName, number | null>>

interface LimitRow {
  tier: string
  max_deployments_per_day: number | null
  max_api_calls_per_day: number | null
  max_compute_hours_per_day: string | null
  max_storage_gb: string | null
}

export function rowToLimits(row: LimitRow): TierLimits {
  const limits = {} as Record<MetricName, number | null>
  for (const name of METRIC_NAMES) limits[name] = limitToMicro(row[METRICS[name].limitColumn])
  return limits
}

export async function loadAllTierLimits(pool: Pool): Promise<Map<string, TierLimits>> {
  const { rows } = await pool.query<LimitRow>(
    `SELECT tier, max_deployments_per_day, max_api_calls_per_day,
            max_compute_hours_per_day::text AS max_compute_hours_per_day, max_storage_gb::text AS max_storage_gb
       FROM usage_limits`,
  )
  return new Map(rows.map((row) => [row.tier, rowToLimits(row)]))
}

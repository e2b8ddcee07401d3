/**
 * Tier limits in micro-units per metric (null = unlimited), from the rows of `usage_limits`.
 */
import { listLimits } from '../db/usage-limits.ts'
import type { TierLimitsRow } from '../db/usage-limits.ts'
import type { Pool } from '../db/client.ts'
import { METRIC_NAMES, METRICS, limitToMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'

export type TierLimits = Readonly<Record<MetricName, number | null>>

export function rowToLimits(row: TierLimitsRow): TierLimits {
  const limits = {} as Record<MetricName, number | null>
  for (const name of METRIC_NAMES) limits[name] = limitToMicro(row[METRICS[name].limitColumn])
  return limits
}

export async function loadAllTierLimits(pool: Pool): Promise<Map<string, TierLimits>> {
  return new Map((await listLimits(pool)).map((row) => [row.tier, rowToLimits(row)]))
}

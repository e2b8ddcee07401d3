/**
 * The shapes of the admin reports (the spec's monitoring queries as JSON) and the conversion of a
 * report row to display numbers.
 */
import type { UsageReportRow } from '../db/reports.ts'
import { METRICS } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'

/** Metrics in registry order, for the near-limits report. */
export const REPORT_METRICS = Object.keys(METRICS) as MetricName[]

/** One user's usage of a day, as display numbers (exact: at most 6 decimals, well within a double). */
export interface UsageRow {
  user_id: string
  username: string
  tier: string
  deployments_created: number
  api_calls: number
  compute_hours: number
  storage_gb: number
}

export function usageRow(row: UsageReportRow): UsageRow {
  return {
    user_id: row.user_id,
    username: row.username,
    tier: row.tier,
    deployments_created: Number(row.deployments_created),
    api_calls: Number(row.api_calls),
    compute_hours: Number(row.compute_hours),
    storage_gb: Number(row.storage_gb),
  }
}

export interface TopUsersReport {
  date: string
  metric: MetricName
  users: UsageRow[]
}

export interface NearMetric {
  current: number
  limit: number
  /** current / limit; null when the limit is 0. */
  ratio: number | null
  /** Over threshold x limit. */
  near: boolean
}

export interface NearLimitsReport {
  date: string
  threshold: number
  users: { user_id: string; username: string; tier: string; metrics: Partial<Record<MetricName, NearMetric>> }[]
}

export interface UsageHistoryReport {
  from: string
  to: string
  user_id: string | null
  days: {
    date: string
    active_users: number
    total_deployments: number
    total_api_calls: number
    total_compute_hours: number
    total_storage_gb: number
  }[]
}

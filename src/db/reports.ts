/**
 * The operators' reports, read from `daily_usage` (never a Redis scan): the spec's monitoring
 * queries ("Today's Top Users", "Users Near Limits", "Historical Usage") with the day, metric,
 * threshold and user as parameters. Raw SQL: they are aggregates and joins over three tables,
 * clearer written out than built. Decimal values come back as exact text (`::text`) and sums of
 * counts too (SUM of bigint is numeric); the caller turns them into numbers.
 *
 * They read what the flusher has written, so they trail the live counters by at most one flush
 * interval (FLUSH_INTERVAL_MS).
 */
import type { Pool } from './client.ts'

/** The `daily_usage` columns a report may order by, per metric (fixed names, never user input). */
export const USAGE_COLUMNS = {
  deployments: 'deployments_created',
  api_calls: 'api_calls',
  compute_hours: 'compute_hours',
  storage: 'storage_gb',
} as const

/** The `usage_limits` column of each metric's limit. */
const LIMIT_COLUMNS = {
  deployments: 'max_deployments_per_day',
  api_calls: 'max_api_calls_per_day',
  compute_hours: 'max_compute_hours_per_day',
  storage: 'max_storage_gb',
} as const

export type ReportMetric = keyof typeof USAGE_COLUMNS

/** One user's row of a day, values as exact decimal text. */
export interface UsageReportRow {
  user_id: string
  username: string
  tier: string
  deployments_created: string
  api_calls: string
  compute_hours: string
  storage_gb: string
}

/** "Today's Top Users": the day's rows, the largest `metric` first (user id breaks ties). */
export async function topUsers(pool: Pool, day: string, metric: ReportMetric, limit: number): Promise<UsageReportRow[]> {
  const column = USAGE_COLUMNS[metric]
  const { rows } = await pool.query<UsageReportRow>(
    `SELECT u.id::text AS user_id, u.username, u.tier,
            du.deployments_created::text, du.api_calls::text, du.compute_hours::text, du.storage_gb::text
       FROM daily_usage du
       JOIN users u ON du.user_id = u.id
      WHERE du.date = $1
      ORDER BY du.${column} DESC, u.id
      LIMIT $2`,
    [day, limit],
  )
  return rows
}

/** A usage row with the tier's limits (null = unlimited), as exact text. */
export interface NearLimitRow extends UsageReportRow {
  max_deployments_per_day: string | null
  max_api_calls_per_day: string | null
  max_compute_hours_per_day: string | null
  max_storage_gb: string | null
  /** Over threshold x limit, per metric, compared exactly by Postgres (null: unlimited). */
  near_deployments: boolean | null
  near_api_calls: boolean | null
  near_compute_hours: boolean | null
  near_storage: boolean | null
}

/**
 * "Users Near Limits": the day's rows over `threshold` x the tier's limit in any metric, the
 * spec's daily two and also compute hours and storage. An unlimited metric (NULL) never counts:
 * `x > NULL * t` is not true. The comparison is exact: the threshold is a numeric parameter.
 */
export async function nearLimits(pool: Pool, day: string, threshold: number, limit: number): Promise<NearLimitRow[]> {
  const metrics = Object.keys(USAGE_COLUMNS) as ReportMetric[]
  const test = (m: ReportMetric) => `du.${USAGE_COLUMNS[m]} > ul.${LIMIT_COLUMNS[m]} * $2::numeric`
  const over = metrics.map(test).join('\n         OR ')
  const flags = metrics.map((m) => `(${test(m)}) AS near_${m}`).join(', ')
  const { rows } = await pool.query<NearLimitRow>(
    `SELECT u.id::text AS user_id, u.username, u.tier,
            du.deployments_created::text, du.api_calls::text, du.compute_hours::text, du.storage_gb::text,
            ul.max_deployments_per_day::text, ul.max_api_calls_per_day::text,
            ul.max_compute_hours_per_day::text, ul.max_storage_gb::text,
            ${flags}
       FROM daily_usage du
       JOIN users u ON du.user_id = u.id
       JOIN usage_limits ul ON u.tier = ul.tier
      WHERE du.date = $1
        AND (${over})
      ORDER BY u.username, u.id
      LIMIT $3`,
    [day, String(threshold), limit],
  )
  return rows
}

/** One day of "Historical Usage", sums as exact text. */
export interface HistoryRow {
  date: string
  active_users: number
  total_deployments: string
  total_api_calls: string
  total_compute_hours: string
  total_storage_gb: string
}

/**
 * "Historical Usage": per day from `days` days before `day` through `day` (the spec's
 * `date >= CURRENT_DATE - INTERVAL '7 days'`, bounded above so a clock set back reads the same),
 * newest first, of everyone or of one user. Days without any row are absent, as in the spec.
 */
export async function usageHistory(pool: Pool, day: string, days: number, userId: string | null): Promise<HistoryRow[]> {
  const { rows } = await pool.query<HistoryRow>(
    `SELECT date, COUNT(*)::int AS active_users,
            SUM(deployments_created)::text AS total_deployments,
            SUM(api_calls)::text AS total_api_calls,
            SUM(compute_hours)::text AS total_compute_hours,
            SUM(storage_gb)::text AS total_storage_gb
       FROM daily_usage
      WHERE date >= $1::date - $2::int AND date <= $1::date
        AND ($3::uuid IS NULL OR user_id = $3::uuid)
      GROUP BY date
      ORDER BY date DESC`,
    [day, days, userId],
  )
  return rows
}

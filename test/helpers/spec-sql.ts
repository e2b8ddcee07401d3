/**
 * The spec's SQL statements, verbatim (only '<uuid>' is substituted by callers): the monitoring
 * and database queries operators run against the schema. test/db/spec-queries.test.ts checks them
 * against the spec file and their results; the embedded-mode test runs them through psql.
 */
export const CHECK_USAGE = `SELECT * FROM daily_usage
WHERE user_id = '<uuid>'
AND date = CURRENT_DATE;`

export const CHECK_TIER = `SELECT username, tier FROM users
WHERE id = '<uuid>';`

export const VIEW_LIMITS = `SELECT * FROM usage_limits;`

export const UPDATE_TIER = `UPDATE users
SET tier = 'pro'
WHERE id = '<uuid>';`

// Troubleshooting, inline: "Verify user's tier".
export const VERIFY_TIER = `SELECT tier FROM users WHERE id = '<uuid>'`

export const TOP_USERS = `SELECT u.username, du.deployments_created, du.api_calls
FROM daily_usage du
JOIN users u ON du.user_id = u.id
WHERE du.date = CURRENT_DATE
ORDER BY du.api_calls DESC
LIMIT 10;`

export const NEAR_LIMITS = `SELECT u.username, u.tier,
       du.deployments_created, ul.max_deployments_per_day,
       du.api_calls, ul.max_api_calls_per_day
FROM daily_usage du
JOIN users u ON du.user_id = u.id
JOIN usage_limits ul ON u.tier = ul.tier
WHERE du.date = CURRENT_DATE
  AND (du.deployments_created > ul.max_deployments_per_day * 0.8
    OR du.api_calls > ul.max_api_calls_per_day * 0.8);`

export const HISTORY = `SELECT date, COUNT(*) as active_users,
       SUM(deployments_created) as total_deployments,
       SUM(api_calls) as total_api_calls
FROM daily_usage
WHERE date >= CURRENT_DATE - INTERVAL '7 days'
GROUP BY date
ORDER BY date DESC;`

/** The spec's seven sql blocks, by name. */
export const SPEC_SQL = { CHECK_USAGE, CHECK_TIER, VIEW_LIMITS, UPDATE_TIER, TOP_USERS, NEAR_LIMITS, HISTORY }

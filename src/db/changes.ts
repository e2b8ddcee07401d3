/**
 * The `quota_changes` notification channel. Triggers on `users` and `usage_limits` NOTIFY it on
 * every change (also from plain SQL in psql); the service NOTIFYs `reset` after a manual reset.
 * Every process LISTENs (limits cache) and drops what it cached.
 */
import type { Pool } from './client.ts'

export const CHANGE_CHANNEL = 'quota_changes'

/** Payloads: `user:<id>` (a user's tier), `reset` (counters zeroed), anything else = tier limits. */
export async function notifyChange(pool: Pool, payload: string): Promise<void> {
  await pool.query('SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, payload])
}

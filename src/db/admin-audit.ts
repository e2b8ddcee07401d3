/**
 * Queries on `admin_audit` (the trail of admin actions) and the few statements an admin reset
 * needs. Typed through drizzle's query builder where it can express them: small, rare statements
 * where clarity wins.
 */
import { desc, eq } from 'drizzle-orm'
import { drizzle } from 'drizzle-orm/node-postgres'
import type { NodePgDatabase } from 'drizzle-orm/node-postgres'
import type { Pool } from './client.ts'
import { adminAudit, users } from './schema.ts'

export type AdminAction = 'manual-reset' | 'set-tier' | 'update-limits'
export type AdminOutcome = 'ok' | 'partial' | 'error' | 'not-found'

export interface AuditEntry {
  /** The admin's user id (token sub); null when code, not an admin request, acted. */
  actor: string | null
  action: AdminAction
  /** What the action named: user_id, tier, metric. */
  target: Record<string, unknown>
  outcome: AdminOutcome
  detail?: Record<string, unknown> | null
}

export interface AuditRow extends Required<AuditEntry> {
  id: number
  at: Date
}

const databases = new WeakMap<Pool, NodePgDatabase>()

/** One drizzle instance per pool: it holds no connection of its own, only the pool. */
function db(pool: Pool): NodePgDatabase {
  let database = databases.get(pool)
  if (!database) {
    database = drizzle(pool)
    databases.set(pool, database)
  }
  return database
}

/** Appends one entry to the trail. */
export async function recordAdminAction(pool: Pool, entry: AuditEntry): Promise<void> {
  await db(pool).insert(adminAudit).values({
    actor: entry.actor,
    action: entry.action,
    target: entry.target,
    outcome: entry.outcome,
    detail: entry.detail ?? null,
  })
}

/** The latest entries, newest first (optionally of one action). */
export async function listAdminActions(pool: Pool, options: { action?: AdminAction; limit?: number } = {}): Promise<AuditRow[]> {
  const rows = await db(pool)
    .select()
    .from(adminAudit)
    .where(options.action === undefined ? undefined : eq(adminAudit.action, options.action))
    .orderBy(desc(adminAudit.id))
    .limit(options.limit ?? 100)
  return rows.map((r) => ({
    id: r.id,
    at: r.at,
    actor: r.actor,
    action: r.action as AdminAction,
    target: r.target as Record<string, unknown>,
    outcome: r.outcome as AdminOutcome,
    detail: (r.detail ?? null) as Record<string, unknown> | null,
  }))
}

/** Whether a user exists (a reset of a user nobody knows must not create anything). */
export async function userExists(pool: Pool, userId: string): Promise<boolean> {
  const rows = await db(pool).select({ id: users.id }).from(users).where(eq(users.id, userId)).limit(1)
  return rows.length > 0
}

/** Postgres' clock now (the clock `daily_usage.updated_at` is written with). */
export async function databaseNow(pool: Pool): Promise<string> {
  const { rows } = await pool.query<{ now: string }>('SELECT clock_timestamp()::text AS now')
  return (rows[0] as { now: string }).now
}

/**
 * The Postgres half of an admin reset: zeroes `columns` of these users' rows of `day`, except
 * rows written at or after `since`. Those were written by a flush that ran after the caller's
 * counter-store reset began — they hold the reset's zeros plus any spend made since (or, if the
 * flush read just before the reset, old values the store's dirty mark will overwrite on the next
 * flush): zeroing them could erase a spend for good, as the row would keep that spend's version.
 * Rows are locked in user order, the order the flusher writes in, so the two never deadlock.
 * Raw SQL: a locking CTE the query builder does not express. Returns the rows zeroed.
 */
export async function zeroRowsNotWrittenSince(
  pool: Pool,
  day: string,
  userIds: readonly string[],
  columns: readonly string[],
  since: string,
): Promise<number> {
  if (userIds.length === 0 || columns.length === 0) return 0
  for (const c of columns) {
    if (!/^[a-z_]+$/.test(c)) throw new Error(`not a column name: ${c}`)
  }
  const result = await pool.query(
    `WITH locked AS (
       SELECT user_id FROM daily_usage
        WHERE date = $1 AND user_id = ANY($2::uuid[]) AND updated_at < $3::timestamptz
        ORDER BY user_id FOR UPDATE
     )
     UPDATE daily_usage du SET ${columns.map((c) => `${c} = 0`).join(', ')}, updated_at = now()
       FROM locked WHERE du.user_id = locked.user_id AND du.date = $1`,
    [day, [...userIds], since],
  )
  return result.rowCount ?? 0
}

/**
 * Queries on `admin_audit` (the trail of admin actions) and the few reads an admin reset needs.
 * Typed through drizzle's query builder: these are small, rare statements where clarity wins.
 */
import { and, count, desc, eq, inArray } from 'drizzle-orm'
import { drizzle } from 'drizzle-orm/node-postgres'
import type { NodePgDatabase } from 'drizzle-orm/node-postgres'
import type { Pool } from './client.ts'
import { adminAudit, dailyUsage, users } from './schema.ts'

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

/** daily_usage rows of `day` held by these users. */
export async function countDayRows(pool: Pool, day: string, userIds: readonly string[]): Promise<number> {
  if (userIds.length === 0) return 0
  const [row] = await db(pool)
    .select({ n: count() })
    .from(dailyUsage)
    .where(and(eq(dailyUsage.date, day), inArray(dailyUsage.userId, [...userIds])))
  return row?.n ?? 0
}

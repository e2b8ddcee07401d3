/**
 * The Postgres schema. Table and column names are part of the public contract (README, Monitoring SQL):
 * operators run the spec's SQL against them. Add columns, never rename.
 */
import { sql } from 'drizzle-orm'
import {
  bigint, bigserial, check, date, foreignKey, index, integer, jsonb, numeric, pgTable, primaryKey, text, timestamp, uuid,
} from 'drizzle-orm/pg-core'

export const usageLimits = pgTable(
  'usage_limits',
  {
    tier: text('tier').primaryKey(),
    // NULL = unlimited.
    maxDeploymentsPerDay: integer('max_deployments_per_day'),
    maxApiCallsPerDay: integer('max_api_calls_per_day'),
    maxComputeHoursPerDay: numeric('max_compute_hours_per_day'),
    maxStorageGb: numeric('max_storage_gb'),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    check('usage_limits_non_negative', sql`coalesce(${t.maxDeploymentsPerDay}, 0) >= 0
      and coalesce(${t.maxApiCallsPerDay}, 0) >= 0
      and coalesce(${t.maxComputeHoursPerDay}, 0) >= 0
      and coalesce(${t.maxStorageGb}, 0) >= 0`),
  ],
)

export const users = pgTable(
  'users',
  {
    id: uuid('id').primaryKey(),
    username: text('username').notNull().unique('users_username_key'),
    tier: text('tier').notNull().default('free'),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    foreignKey({ name: 'users_tier_fkey', columns: [t.tier], foreignColumns: [usageLimits.tier] })
      .onUpdate('cascade'),
  ],
)

export const dailyUsage = pgTable(
  'daily_usage',
  {
    userId: uuid('user_id').notNull(),
    date: date('date', { mode: 'string' }).notNull(),
    // bigint, not int: an unlimited (enterprise) user can pass 2^31 calls in a day, and one row that
    // cannot be written must never hold back the flush. Still an integer type for the spec's SQL.
    deploymentsCreated: bigint('deployments_created', { mode: 'number' }).notNull().default(0),
    apiCalls: bigint('api_calls', { mode: 'number' }).notNull().default(0),
    computeHours: numeric('compute_hours').notNull().default('0'),
    storageGb: numeric('storage_gb').notNull().default('0'),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
    /**
     * Version of the Redis user-day this row was written from. A flush only overwrites a row with
     * an older version, so overlapping flushers (several replicas) never write stale totals.
     */
    version: bigint('version', { mode: 'number' }).notNull().default(0),
  },
  (t) => [
    primaryKey({ name: 'daily_usage_pkey', columns: [t.userId, t.date] }),
    foreignKey({ name: 'daily_usage_user_id_fkey', columns: [t.userId], foreignColumns: [users.id] })
      .onDelete('cascade'),
    // Serves the spec's "WHERE date = CURRENT_DATE ORDER BY api_calls DESC LIMIT 10".
    index('daily_usage_date_api_calls_idx').on(t.date, t.apiCalls.desc()),
  ],
)

/** One row per scheduled job run and day: makes the midnight snapshot run once per day. */
export const schedulerRuns = pgTable(
  'scheduler_runs',
  {
    job: text('job').notNull(),
    day: date('day', { mode: 'string' }).notNull(),
    ranAt: timestamp('ran_at', { withTimezone: true }).notNull().defaultNow(),
    detail: text('detail'),
  },
  (t) => [primaryKey({ name: 'scheduler_runs_pkey', columns: [t.job, t.day] })],
)

/**
 * One row per admin action (manual reset, tier change, limit edit), whatever its outcome: who did
 * what, when, and how it ended, readable by SQL. No foreign key to users: the trail outlives them.
 */
export const adminAudit = pgTable(
  'admin_audit',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    at: timestamp('at', { withTimezone: true }).notNull().defaultNow(),
    // The admin token's sub; NULL for an action started by code rather than by an admin request.
    actor: uuid('actor'),
    action: text('action').notNull(),
    // What the action named: user_id / tier / metric.
    target: jsonb('target').notNull().default({}),
    outcome: text('outcome').notNull(),
    detail: jsonb('detail'),
  },
  (t) => [
    check('admin_audit_action', sql`${t.action} in ('manual-reset', 'set-tier', 'update-limits')`),
    check('admin_audit_outcome', sql`${t.outcome} in ('ok', 'partial', 'error', 'not-found')`),
    index('admin_audit_at_idx').on(t.at),
    index('admin_audit_actor_at_idx').on(t.actor, t.at),
  ],
)

/**
 * Idempotent answers copied from the counter store by the flusher, so a retried call still
 * replays its first answer after Redis lost its data (restart without persistence, failover).
 * Read only after such a loss; rows past `expires_at` are deleted by the midnight job.
 */
export const idempotencyRecords = pgTable(
  'idempotency_records',
  {
    userId: uuid('user_id').notNull(),
    key: text('key').notNull(),
    // The store's own encoding of the answer (opaque here).
    answer: text('answer').notNull(),
    expiresAt: timestamp('expires_at', { withTimezone: true, mode: 'string' }).notNull(),
  },
  (t) => [
    primaryKey({ name: 'idempotency_records_pkey', columns: [t.userId, t.key] }),
    index('idempotency_records_expires_at_idx').on(t.expiresAt),
  ],
)

/**
 * The Postgres schema. Table and column names are part of the public contract (README, Monitoring SQL):
 * operators run the spec's SQL against them. Add columns, never rename.
 */
import { sql } from 'drizzle-orm'
import {
  bigint, bigserial, check, date, foreignKey, index, integer, jsonb, numeric, pgTable, primaryKey, smallint, text, timestamp,
  uniqueIndex, uuid,
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

/**
 * Range-partitioned by month on `date` (daily_usage_YYYY_MM, plus daily_usage_default): drizzle
 * cannot declare partitioning, so hand-written migration 0006 does it and db/partitions.ts keeps
 * the months ahead (docs/scaling.md). What follows is what every partition has.
 */
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

/**
 * Threshold events (docs/events.md): a daily metric of a user reaching 80 % or 100 % of its limit
 * on a day, copied from the counter store by the flusher, and the state of its webhook delivery.
 * One live row (rearmed_at NULL) per user, metric, day and threshold; an admin reset or a tier or
 * limit change through the API sets rearmed_at, so the next crossing of that day is a new event.
 */
export const usageEvents = pgTable(
  'usage_events',
  {
    id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    userId: uuid('user_id').notNull(),
    metric: text('metric').notNull(),
    date: date('date', { mode: 'string' }).notNull(),
    threshold: smallint('threshold').notNull(),
    // The metric's value right after the crossing decision, and the limit then in force.
    current: numeric('current').notNull(),
    limit: numeric('limit').notNull(),
    // When the crossing decision ran (the service's clock), not when the row was written.
    createdAt: timestamp('created_at', { withTimezone: true, mode: 'string' }).notNull(),
    rearmedAt: timestamp('rearmed_at', { withTimezone: true, mode: 'string' }),
    attempts: integer('attempts').notNull().default(0),
    nextAttemptAt: timestamp('next_attempt_at', { withTimezone: true, mode: 'string' }).notNull().defaultNow(),
    deliveredAt: timestamp('delivered_at', { withTimezone: true, mode: 'string' }),
    lastError: text('last_error'),
    gaveUpAt: timestamp('gave_up_at', { withTimezone: true, mode: 'string' }),
  },
  (t) => [
    foreignKey({ name: 'usage_events_user_id_fkey', columns: [t.userId], foreignColumns: [users.id] })
      .onDelete('cascade'),
    check('usage_events_threshold', sql`${t.threshold} in (80, 100)`),
    // One live event per user, metric, day and threshold. Day first: a re-arm names a day (and
    // maybe a user), and finds its rows through this index.
    uniqueIndex('usage_events_live_key').on(t.date, t.userId, t.metric, t.threshold).where(sql`${t.rearmedAt} IS NULL`),
    // The same crossing copied twice (a flush that wrote it and died before the store forgot it)
    // is one row, live or re-armed since.
    uniqueIndex('usage_events_crossing_key').on(t.userId, t.metric, t.date, t.threshold, t.createdAt),
    // The delivery worker's claim: undelivered events by due time.
    index('usage_events_due_idx').on(t.nextAttemptAt).where(sql`${t.deliveredAt} IS NULL AND ${t.gaveUpAt} IS NULL`),
  ],
)

/**
 * Admin work, apart from the hot path: manual resets, any user's status, tier changes and tier
 * limit edits. Every change goes to Postgres first; this process's caches drop what changed at
 * once, and every other replica's through the `quota_changes` notification. Every change is also
 * recorded in `admin_audit` (who, what, when, how it ended), whatever its outcome.
 */
import type { Logger } from 'pino'
import type { Clock } from '../clock.ts'
import { utcDay } from '../clock.ts'
import type { CounterStore } from '../counters/store.ts'
import { databaseNow, recordAdminAction, userExists, zeroRowsNotWrittenSince } from '../db/admin-audit.ts'
import type { AdminAction, AdminOutcome } from '../db/admin-audit.ts'
import { notifyChange } from '../db/changes.ts'
import type { Pool } from '../db/client.ts'
import { activeUserIds } from '../db/daily-usage.ts'
import { nearLimits, topUsers, usageHistory } from '../db/reports.ts'
import { listEvents, rearmEvents, rearmTierEvents } from '../db/usage-events.ts'
import type { EventRow } from '../db/usage-events.ts'
import { listLimits, updateLimits } from '../db/usage-limits.ts'
import type { LimitColumn, TierLimitsRow } from '../db/usage-limits.ts'
import { getUser, setUserTier } from '../db/users.ts'
import type { UserRow } from '../db/users.ts'
import type { LimitsCache } from '../limits/limits-cache.ts'
import { InvalidAmountError, METRICS, isMetricName } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import { DAILY_METRICS, normalizeUserId } from './amounts.ts'
import { UnknownTierError } from './errors.ts'
import type { UsageService } from './service.ts'
import { unavailable } from './service.ts'
import type { ResetSummary, UsageStatus } from './types.ts'
import { REPORT_METRICS, usageRow } from './reports.ts'
import type { NearLimitsReport, NearMetric, TopUsersReport, UsageHistoryReport } from './reports.ts'

/** Users whose counters a reset zeroes at once. */
const RESET_CONCURRENCY = 100
/** Most failed user ids a reset summary lists (the count is always exact). */
const FAILED_IDS_LISTED = 100

export type AuditLogger = Pick<Logger, 'error'>

/** Who acts: recorded in the audit trail. */
export interface AdminActor {
  /** The admin's user id (the token's sub). */
  id: string
  /** Where a failed audit write is reported (the request's logger). @default the service's logger */
  log?: AuditLogger
}

export interface AdminServiceOptions {
  pool: Pool
  store: CounterStore
  limits: LimitsCache
  usage: UsageService
  clock: Clock
  /** Writes every pending change to Postgres: who was active today, and the zeros of a reset. */
  flushAll: () => Promise<unknown>
  /** Copies the store's threshold crossings to usage_events (before a re-arm). @default none */
  flushEvents?: () => Promise<unknown>
  /** Reports failed audit writes of actions without an actor logger. */
  logger?: AuditLogger
}

export interface ResetOptions {
  userId?: string | undefined
  metric?: MetricName | undefined
  actor?: AdminActor | undefined
}

export class AdminService {
  readonly #options: AdminServiceOptions

  constructor(options: AdminServiceOptions) {
    this.#options = options
  }

  /**
   * Zeroes today's counters — of one user or of everyone, of one metric or of every daily metric
   * (`storage` only when named) — in the counter store and in daily_usage. Undefined when the
   * named user does not exist (nothing is touched).
   *
   * Per batch of users: the store first, then the daily_usage rows of the users it reset. This
   * order keeps them agreeing whatever runs in between: the store's reset bumps the user-day's
   * version and marks it dirty, so the next flush writes the zeros (and any spend made since)
   * even if the Postgres step fails or is skipped; and the Postgres step leaves alone rows a
   * flush wrote after the batch began (zeroing those could erase a spend for good). The other
   * order could zero a row while the store keeps the counts, if the store's reset then failed.
   *
   * One user's failure does not stop the others: the summary lists who failed (`complete: false`),
   * and the same reset again finishes the job (zeroing twice ends where zeroing once does). Only a
   * store unavailable for every user of the scope is an error (UsageUnavailableError).
   */
  async reset(options: ResetOptions = {}): Promise<ResetSummary | undefined> {
    const { pool, store, clock } = this.#options
    if (options.metric !== undefined && !isMetricName(options.metric)) {
      throw new InvalidAmountError(`unknown metric "${String(options.metric)}"`, 'metric')
    }
    const metrics = options.metric === undefined ? [...DAILY_METRICS] : [options.metric]
    const columns = metrics.map((m) => METRICS[m].column)
    const now = clock.now()
    const day = utcDay(now)
    const userId = options.userId === undefined ? null : normalizeUserId(options.userId)
    const target = { user_id: userId, metric: options.metric ?? null, date: day }
    let summary: ResetSummary
    try {
      let users: string[]
      if (userId !== null) {
        // A user nobody knows has no counters; resetting one would only create keys for it.
        if (!(await userExists(pool, userId))) {
          await this.#audit(options.actor, 'manual-reset', target, 'not-found')
          return undefined
        }
        users = [userId]
      } else {
        // Everyone active today is in daily_usage once everything is flushed: no keyspace scan.
        await this.#options.flushAll()
        users = await activeUserIds(pool, day)
      }
      const reset: string[] = []
      const failed: { userId: string; error: unknown }[] = []
      let rows = 0
      let persistError: string | undefined
      for (let i = 0; i < users.length; i += RESET_CONCURRENCY) {
        const batch = users.slice(i, i + RESET_CONCURRENCY)
        let since: string | undefined
        try {
          since = await databaseNow(pool)
        } catch (err) {
          persistError ??= (err as Error).message
        }
        const results = await Promise.allSettled(batch.map((u) => store.reset(u, day, now, metrics)))
        const done: string[] = []
        results.forEach((r, j) => {
          const u = batch[j] as string
          if (r.status === 'fulfilled') done.push(u)
          else failed.push({ userId: u, error: r.reason })
        })
        reset.push(...done)
        try {
          if (since !== undefined) rows += await zeroRowsNotWrittenSince(pool, day, done, columns, since)
        } catch (err) {
          // The store's dirty marks still carry the zeros: the next flush writes them.
          persistError ??= (err as Error).message
        }
      }
      if (users.length > 0 && reset.length === 0) throw failed[0]?.error
      const persisted = persistError === undefined
      this.#options.usage.forgetDenials(userId)
      // Other replicas drop their remembered denials too.
      await notifyChange(pool, 'reset').catch(() => {})
      summary = {
        date: day,
        user_id: userId,
        metrics,
        users_reset: reset.length,
        rows_updated: rows,
        complete: failed.length === 0 && persisted,
        users_failed: failed.slice(0, FAILED_IDS_LISTED).map((f) => f.userId),
        users_failed_count: failed.length,
        persisted,
      }
      // The reset users' threshold events of the day end: their next crossings are new events.
      const rearm = await this.#rearm({ userIds: userId === null && failed.length === 0 ? null : reset }, day, metrics)
      const reasons = [...new Set(failed.map((f) => (f.error as Error)?.message ?? String(f.error)))].slice(0, 5)
      await this.#audit(options.actor, 'manual-reset', target, summary.complete ? 'ok' : 'partial', {
        ...rearm,
        users_reset: summary.users_reset,
        rows_updated: summary.rows_updated,
        users_failed: summary.users_failed,
        users_failed_count: summary.users_failed_count,
        persisted,
        ...(reasons.length > 0 ? { failure_reasons: reasons } : {}),
        ...(persistError === undefined ? {} : { persist_error: persistError }),
      })
    } catch (err) {
      await this.#audit(options.actor, 'manual-reset', target, 'error', { error: (err as Error)?.message ?? String(err) })
      throw unavailable(err)
    }
    return summary
  }

  /** Any user's status; undefined when the user does not exist. */
  async userStatus(userId: string): Promise<UsageStatus | undefined> {
    const user = await getUser(this.#options.pool, userId)
    return user ? this.#options.usage.status(user.id) : undefined
  }

  /** Changes a user's tier (UnknownTierError for a tier that does not exist); undefined for an unknown user. */
  async setUserTier(userId: string, tier: string, actor?: AdminActor): Promise<UserRow | undefined> {
    const target = { user_id: userId.toLowerCase(), tier }
    let user: UserRow | undefined
    try {
      user = await setUserTier(this.#options.pool, userId, tier)
    } catch (err) {
      await this.#audit(actor, 'set-tier', target, 'error', { error: (err as Error).message })
      throw err
    }
    if (user) this.#options.limits.invalidateUser(user.id)
    const rearm = user ? await this.#rearm({ userIds: [user.id] }, utcDay(this.#options.clock.now())) : {}
    await this.#audit(actor, 'set-tier', target, user ? 'ok' : 'not-found', user ? rearm : undefined)
    return user
  }

  async listLimits(): Promise<TierLimitsRow[]> {
    return listLimits(this.#options.pool)
  }

  /** Edits a tier's limits (null = unlimited; absent = unchanged); UnknownTierError for an unknown tier. */
  async updateLimits(
    tier: string,
    limits: Partial<Record<LimitColumn, number | null>>,
    actor?: AdminActor,
  ): Promise<TierLimitsRow> {
    const target = { tier }
    let row: TierLimitsRow
    try {
      row = await updateLimits(this.#options.pool, tier, limits)
    } catch (err) {
      const outcome = err instanceof UnknownTierError && err.tier === tier ? 'not-found' : 'error'
      await this.#audit(actor, 'update-limits', target, outcome, { limits, error: (err as Error).message })
      throw err
    }
    await this.#options.limits.invalidateAll()
    // The events of the metrics whose limit was named, of every user of the tier.
    const metrics = DAILY_METRICS.filter((m) => METRICS[m].limitColumn in limits)
    const rearm = metrics.length > 0 ? await this.#rearm({ tier }, utcDay(this.#options.clock.now()), metrics) : {}
    await this.#audit(actor, 'update-limits', target, 'ok', { limits, ...rearm })
    return row
  }

  /**
   * Re-arms today's threshold events of a scope (docs/events.md): the crossings made so far are
   * copied to usage_events, then the scope's live events of `day` end, so the next crossing is a
   * new event. Never throws (the change it follows has happened): returns what goes in the audit.
   */
  async #rearm(
    scope: { userIds: readonly string[] | null } | { tier: string },
    day: string,
    metrics?: readonly MetricName[],
  ): Promise<{ events_rearmed: number } | { rearm_error: string }> {
    const { pool, clock } = this.#options
    try {
      await this.#options.flushEvents?.()
      const at = clock.now()
      const n = 'tier' in scope
        ? await rearmTierEvents(pool, { tier: scope.tier, day, at, metrics })
        : await rearmEvents(pool, { userIds: scope.userIds, day, at, metrics })
      return { events_rearmed: n }
    } catch (err) {
      this.#options.logger?.error({ err: (err as Error).message, scope, day }, 'threshold events not re-armed')
      return { rearm_error: (err as Error).message }
    }
  }

  /** Threshold events with an id above `after`, oldest first, with their delivery state. */
  async listEvents(after: number, limit: number): Promise<EventRow[]> {
    return listEvents(this.#options.pool, after, limit)
  }

  /**
   * Records one admin action. A failed write is logged, never thrown: the action has happened (or
   * failed) already, and its own answer must reach the caller.
   */
  async #audit(
    actor: AdminActor | undefined,
    action: AdminAction,
    target: Record<string, unknown>,
    outcome: AdminOutcome,
    detail?: Record<string, unknown>,
  ): Promise<void> {
    try {
      await recordAdminAction(this.#options.pool, { actor: actor?.id ?? null, action, target, outcome, detail })
    } catch (err) {
      const log = actor?.log ?? this.#options.logger
      const entry = { err: (err as Error).message, actor: actor?.id ?? null, action, target, outcome }
      if (log) log.error(entry, 'admin action not recorded in admin_audit')
      else console.error('admin action not recorded in admin_audit', entry)
    }
  }

  // ---- Reports: the spec's monitoring queries, read from daily_usage (db/reports.ts) ----

  /** "Today's Top Users": `day` (default today), the largest use of `metric` first. */
  async topUsers(options: { day?: string; metric: MetricName; limit: number }): Promise<TopUsersReport> {
    const day = options.day ?? utcDay(this.#options.clock.now())
    const rows = await topUsers(this.#options.pool, day, options.metric, options.limit)
    return { date: day, metric: options.metric, users: rows.map(usageRow) }
  }

  /** "Users Near Limits" today: over `threshold` x limit in a limited metric (never an unlimited one). */
  async nearLimits(options: { threshold: number; limit: number }): Promise<NearLimitsReport> {
    const day = utcDay(this.#options.clock.now())
    const rows = await nearLimits(this.#options.pool, day, options.threshold, options.limit)
    const users = rows.map((row) => {
      const metrics: Partial<Record<MetricName, NearMetric>> = {}
      for (const metric of REPORT_METRICS) {
        const limitText = row[METRICS[metric].limitColumn]
        if (limitText === null) continue
        const current = Number(row[METRICS[metric].column])
        const limit = Number(limitText)
        metrics[metric] = {
          current,
          limit,
          ratio: limit === 0 ? null : current / limit,
          // Postgres' exact decimal comparison, not a float product here (10 x 0.7 is not 7 in doubles).
          near: row[`near_${metric}`] === true,
        }
      }
      return { user_id: row.user_id, username: row.username, tier: row.tier, metrics }
    })
    return { date: day, threshold: options.threshold, users }
  }

  /** "Historical Usage": per day from `days` days ago through today, of everyone or one user. */
  async usageHistory(options: { days: number; userId?: string | undefined }): Promise<UsageHistoryReport> {
    const now = this.#options.clock.now()
    const to = utcDay(now)
    const from = utcDay(Date.parse(`${to}T00:00:00Z`) - options.days * 86_400_000)
    const userId = options.userId === undefined ? null : normalizeUserId(options.userId)
    const rows = await usageHistory(this.#options.pool, to, options.days, userId)
    return {
      from,
      to,
      user_id: userId,
      days: rows.map((r) => ({
        date: r.date,
        active_users: r.active_users,
        total_deployments: Number(r.total_deployments),
        total_api_calls: Number(r.total_api_calls),
        total_compute_hours: Number(r.total_compute_hours),
        total_storage_gb: Number(r.total_storage_gb),
      })),
    }
  }
}

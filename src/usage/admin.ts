/**
 * Admin work, apart from the hot path: manual resets, any user's status, tier changes and tier
 * limit edits. Every change goes to Postgres first; this process's caches drop what changed at
 * once, and every other replica's through the `quota_changes` notification.
 */
import type { Clock } from '../clock.ts'
import { utcDay } from '../clock.ts'
import type { CounterStore } from '../counters/store.ts'
import { notifyChange } from '../db/changes.ts'
import type { Pool } from '../db/client.ts'
import { activeUserIds, zeroColumns } from '../db/daily-usage.ts'
import { listLimits, updateLimits } from '../db/usage-limits.ts'
import type { LimitColumn, TierLimitsRow } from '../db/usage-limits.ts'
import { getUser, setUserTier } from '../db/users.ts'
import type { UserRow } from '../db/users.ts'
import type { LimitsCache } from '../limits/limits-cache.ts'
import { InvalidAmountError, METRICS, isMetricName } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import { DAILY_METRICS, normalizeUserId } from './amounts.ts'
import type { UsageService } from './service.ts'
import { unavailable } from './service.ts'
import type { ResetSummary, UsageStatus } from './types.ts'

/** Users whose counters a reset zeroes at once. */
const RESET_CONCURRENCY = 100

export interface AdminServiceOptions {
  pool: Pool
  store: CounterStore
  limits: LimitsCache
  usage: UsageService
  clock: Clock
  /** Writes every pending change to Postgres, so a reset of everyone knows who was active today. */
  flushAll: () => Promise<unknown>
}

export class AdminService {
  readonly #options: AdminServiceOptions

  constructor(options: AdminServiceOptions) {
    this.#options = options
  }

  /**
   * Zeroes today's counters — of one user or of everyone, of one metric or of every daily metric
   * (`storage` only when named) — in the counter store and in daily_usage.
   */
  async reset(options: { userId?: string | undefined; metric?: MetricName | undefined } = {}): Promise<ResetSummary> {
    const { pool, store, clock } = this.#options
    if (options.metric !== undefined && !isMetricName(options.metric)) {
      throw new InvalidAmountError(`unknown metric "${String(options.metric)}"`, 'metric')
    }
    const metrics = options.metric === undefined ? [...DAILY_METRICS] : [options.metric]
    const now = clock.now()
    const day = utcDay(now)
    const userId = options.userId === undefined ? null : normalizeUserId(options.userId)
    try {
      let users: string[]
      if (userId !== null) {
        users = [userId]
      } else {
        // Everyone active today is in daily_usage once everything is flushed: no keyspace scan.
        await this.#options.flushAll()
        users = await activeUserIds(pool, day)
      }
      for (let i = 0; i < users.length; i += RESET_CONCURRENCY) {
        await Promise.all(users.slice(i, i + RESET_CONCURRENCY).map((u) => store.reset(u, day, now, metrics)))
      }
      const rows = await zeroColumns(pool, day, userId, metrics.map((m) => METRICS[m].column))
      this.#options.usage.forgetDenials(userId)
      // Other replicas drop their remembered denials too.
      await notifyChange(pool, 'reset').catch(() => {})
      return { date: day, user_id: userId, metrics, users_reset: users.length, rows_updated: rows }
    } catch (err) {
      throw unavailable(err)
    }
  }

  /** Any user's status; undefined when the user does not exist. */
  async userStatus(userId: string): Promise<UsageStatus | undefined> {
    const user = await getUser(this.#options.pool, userId)
    return user ? this.#options.usage.status(user.id) : undefined
  }

  /** Changes a user's tier (UnknownTierError for a tier that does not exist); undefined for an unknown user. */
  async setUserTier(userId: string, tier: string): Promise<UserRow | undefined> {
    const user = await setUserTier(this.#options.pool, userId, tier)
    if (user) this.#options.limits.invalidateUser(user.id)
    return user
  }

  async listLimits(): Promise<TierLimitsRow[]> {
    return listLimits(this.#options.pool)
  }

  /** Edits a tier's limits (null = unlimited; absent = unchanged); UnknownTierError for an unknown tier. */
  async updateLimits(tier: string, limits: Partial<Record<LimitColumn, number | null>>): Promise<TierLimitsRow> {
    const row = await updateLimits(this.#options.pool, tier, limits)
    await this.#options.limits.invalidateAll()
    return row
  }
}

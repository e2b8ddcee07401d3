/**
 * The usage service: what `app.usage` exposes and every route calls. It validates input, turns
 * display amounts into micro-units once, looks up the user's tier (in-process cache), makes one
 * counter-store call, and turns the answer back into display units. The fail mode of
 * USAGE_FAIL_MODE is applied here, in one place.
 */
import type { Logger } from 'pino'
import type { Clock } from '../clock.ts'
import { nextMidnightIso, utcDay } from '../clock.ts'
import { CounterUnavailableError } from '../counters/redis-store.ts'
import type { ApplyItem, ApplyResult, Mode, RedisCounterStore } from '../counters/redis-store.ts'
import type { ServerClock } from '../counters/redis-client.ts'
import type { FailMode } from '../config.ts'
import type { LimitsCache } from '../limits/limits-cache.ts'
import type { TierLimits } from '../limits/tier-limits.ts'
import { InvalidAmountError, METRIC_NAMES, METRICS, fromMicro, isMetricName, toMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import { isUuid } from '../ids.ts'
import { UsageUnavailableError } from './errors.ts'
import { DenyCache } from './deny-cache.ts'
import type { Pool } from '../db/client.ts'
import { activeUserIds, zeroColumns } from '../db/daily-usage.ts'
import type { Amounts, CallOptions, ConsumeResult, ConsumedMetric, Decision, MetricState, ResetSummary, UsageStatus } from './types.ts'

const IDEMPOTENCY_KEY = /^[\x20-\x7e]{1,128}$/

export class IdempotencyConflictError extends Error {
  override name = 'IdempotencyConflictError'
  constructor() {
    super('This idempotency_key was already used with different parameters')
  }
}

export interface UsageServiceOptions {
  store: RedisCounterStore
  limits: LimitsCache
  clock: Clock
  failMode: FailMode
  /** REDIS_COMMAND_TIMEOUT_MS: how long a decision may wait for Redis. */
  commandTimeoutMs: number
  /** Maps local time to Redis time for decision deadlines; without it, no deadline is sent. */
  serverClock?: ServerClock
  logger?: Pick<Logger, 'warn' | 'error'>
  /** Postgres, for manual resets of daily_usage. */
  pool?: Pool
  /** Flushes everything before a reset of every user, so the reset knows who was active. */
  flushAll?: () => Promise<unknown>
  /** Answer repeated denials of daily limits from memory for up to this long (0 = off). @default 1000 */
  denyCacheMs?: number
}

/** What a manual reset without `metric` zeroes: today's daily counters (the storage gauge is not a daily count). */
export const DAILY_METRICS: readonly MetricName[] = METRIC_NAMES.filter((m) => METRICS[m].period === 'day')

/** Lower-case UUID, or InvalidAmountError naming `field`. */
export function normalizeUserId(userId: string, field = 'user_id'): string {
  if (!isUuid(userId)) throw new InvalidAmountError(`${field} must be a UUID`, field)
  return userId.toLowerCase()
}

function checkIdempotencyKey(key: string | undefined): void {
  if (key === undefined) return
  if (typeof key !== 'string' || !IDEMPOTENCY_KEY.test(key)) {
    throw new InvalidAmountError('idempotency_key must be 1-128 printable ASCII characters', 'idempotency_key')
  }
}

export function denialReason(metric: MetricName): string {
  return METRICS[metric].period === 'day' ? `Daily ${metric} limit exceeded` : `${metric[0]?.toUpperCase()}${metric.slice(1)} limit exceeded`
}

function state(metric: MetricName, current: number, limit: number | null): MetricState {
  return {
    current: fromMicro(current),
    limit: limit === null ? null : fromMicro(limit),
    remaining: limit === null ? null : fromMicro(Math.max(0, limit - current)),
    unit: METRICS[metric].unit,
    period: METRICS[metric].period,
  }
}

interface Prepared {
  metrics: MetricName[]
  micro: number[]
}

export class UsageService {
  readonly #o: UsageServiceOptions

  /** Deadline of one Redis call, in Redis time: now + REDIS_COMMAND_TIMEOUT_MS (made once). */
  readonly #deadlineFn: (() => number) | undefined

  readonly #denials: DenyCache | undefined

  constructor(options: UsageServiceOptions) {
    this.#o = options
    const denyMs = options.denyCacheMs ?? 1000
    this.#denials = denyMs > 0 ? new DenyCache({ ttlMs: denyMs }) : undefined
    if (this.#denials) {
      const denials = this.#denials
      options.limits.onInvalidate((userId) => denials.forget(userId))
    }
    const sc = options.serverClock
    const timeout = options.commandTimeoutMs
    this.#deadlineFn = sc ? () => sc.toServer(Date.now()) + timeout : undefined
  }

  get clock(): Clock {
    return this.#o.clock
  }

  /** Would `amount` of `metric` be allowed now? Changes nothing. */
  async checkLimit(userId: string, metric: MetricName, amount = 1): Promise<Decision> {
    const id = normalizeUserId(userId)
    const prepared = this.#prepare({ [metric]: amount }, false)
    const tier = await this.#tier(id)
    const limits = this.#limitsOf(tier)
    const now = this.#o.clock.now()
    const result = await this.#apply('check', id, tier, limits, prepared, now, undefined)
    if (result === null) return this.#degradedDecision(metric, amount, tier, now)
    const current = result.current[0] ?? 0
    const limit = result.limits[0] ?? null
    const allowed = result.outcome === 'allowed'
    const s = state(metric, current, limit)
    return {
      allowed,
      reason: allowed ? null : denialReason(metric),
      metric,
      amount: fromMicro(prepared.micro[0] ?? 0),
      current: s.current,
      limit: s.limit,
      remaining: s.remaining,
      tier,
      resetsAt: this.#resetsAt(metric, now),
    }
  }

  /** Atomic check-and-increment of one or several metrics: all or nothing. */
  async consume(userId: string, amounts: Amounts, options: CallOptions = {}): Promise<ConsumeResult> {
    return this.#spend('consume', userId, amounts, options)
  }

  /** Records actual usage unconditionally (storage may be negative: data deleted). */
  async incrementUsage(userId: string, metric: MetricName, amount: number, options: CallOptions = {}): Promise<ConsumeResult> {
    return this.#spend('increment', userId, { [metric]: amount }, options)
  }

  /** Gives back what a consume took (a guarded handler failed), on the day it was taken. */
  async refund(userId: string, amounts: Amounts, day: string): Promise<void> {
    const id = normalizeUserId(userId)
    const prepared = this.#prepare(amounts, false)
    const now = this.#o.clock.now()
    const items = prepared.metrics.map((m, i) => ({ field: METRICS[m].field, amount: prepared.micro[i] ?? 0, limit: null }))
    this.#denials?.forget(id)
    try {
      await this.#o.store.apply({ mode: 'refund', userId: id, day, now, items, deadline: this.#deadlineFn })
    } catch (err) {
      if (err instanceof CounterUnavailableError) {
        // The request already failed for its own reason; losing a refund over-counts, never over-admits.
        this.#o.logger?.warn({ err: err.message, userId: id, amounts }, 'usage refund lost: redis unavailable')
        return
      }
      throw err
    }
  }

  /** Today's usage of every metric. */
  async status(userId: string): Promise<UsageStatus> {
    const id = normalizeUserId(userId)
    const tier = await this.#tier(id)
    const limits = this.#limitsOf(tier)
    const now = this.#o.clock.now()
    const items: ApplyItem[] = METRIC_NAMES.map((m) => ({ field: METRICS[m].field, amount: 0, limit: limits[m] }))
    let result: ApplyResult
    try {
      result = await this.#o.store.apply({ mode: 'check', userId: id, day: utcDay(now), now, items, deadline: this.#deadlineFn })
    } catch (err) {
      throw this.#unavailable(err)
    }
    const metrics = {} as Record<MetricName, MetricState>
    METRIC_NAMES.forEach((m, i) => {
      metrics[m] = state(m, result.current[i] ?? 0, limits[m])
    })
    return { user_id: id, tier, date: utcDay(now), resets_at: nextMidnightIso(now), metrics }
  }

  /**
   * Zeroes today's counters — of one user or of everyone, of one metric or of every daily metric
   * (`storage` only when named) — in Redis and in daily_usage.
   */
  async reset(options: { userId?: string | undefined; metric?: MetricName | undefined } = {}): Promise<ResetSummary> {
    const { pool } = this.#o
    if (!pool) throw new Error('UsageService.reset needs a pool')
    const metrics = options.metric === undefined ? [...DAILY_METRICS] : [options.metric]
    if (options.metric !== undefined && !isMetricName(options.metric)) {
      throw new InvalidAmountError(`unknown metric "${String(options.metric)}"`, 'metric')
    }
    const fields = metrics.map((m) => METRICS[m].field)
    const columns = metrics.map((m) => METRICS[m].column)
    const now = this.#o.clock.now()
    const day = utcDay(now)
    const userId = options.userId === undefined ? null : normalizeUserId(options.userId)
    try {
      let users: string[]
      if (userId !== null) {
        users = [userId]
      } else {
        // Everyone active today is in daily_usage once everything is flushed: no keyspace scan.
        await this.#o.flushAll?.()
        users = await activeUserIds(pool, day)
      }
      for (let i = 0; i < users.length; i += 100) {
        await Promise.all(users.slice(i, i + 100).map((u) => this.#o.store.reset(u, day, now, fields)))
      }
      const rows = await zeroColumns(pool, day, userId, columns)
      this.#denials?.forget(userId)
      // Other replicas drop their remembered denials too.
      await pool.query(`SELECT pg_notify('quota_changes', 'reset')`).catch(() => {})
      return { date: day, user_id: userId, metrics, users_reset: users.length, rows_updated: rows }
    } catch (err) {
      throw this.#unavailable(err)
    }
  }

  async #spend(mode: 'consume' | 'increment', userId: string, amounts: Amounts, options: CallOptions): Promise<ConsumeResult> {
    const id = normalizeUserId(userId)
    checkIdempotencyKey(options.idempotencyKey)
    const prepared = this.#prepare(amounts, mode === 'increment')
    const tier = await this.#tier(id)
    const limits = this.#limitsOf(tier)
    const now = this.#o.clock.now()
    const day = utcDay(now)
    const remembered = this.#rememberedDenial(mode, id, day, tier, limits, prepared, options.idempotencyKey, now)
    if (remembered) return remembered
    const result = await this.#apply(mode, id, tier, limits, prepared, now, options.idempotencyKey)
    if (result === null) {
      const metrics: Partial<Record<MetricName, ConsumedMetric>> = {}
      prepared.metrics.forEach((m, i) => {
        metrics[m] = { ...state(m, 0, limits[m]), current: null, remaining: null, amount: fromMicro(prepared.micro[i] ?? 0) }
      })
      return { allowed: true, reason: null, deniedMetric: null, tier, day, metrics, resetsAt: this.#earliestReset(prepared.metrics, now), replayed: false, degraded: true }
    }
    if (result.outcome === 'conflict') throw new IdempotencyConflictError()
    // A replay answers as the first call did: its tier and its day (stored as "<day> <tier>").
    let answerTier = tier
    let answerDay = day
    if (result.replayed && result.context) {
      const space = result.context.indexOf(' ')
      answerDay = result.context.slice(0, space)
      answerTier = result.context.slice(space + 1)
    }
    const answerNow = answerDay === day ? now : Date.parse(`${answerDay}T12:00:00Z`)
    const metrics: Partial<Record<MetricName, ConsumedMetric>> = {}
    prepared.metrics.forEach((m, i) => {
      metrics[m] = { ...state(m, result.current[i] ?? 0, result.limits[i] ?? null), amount: fromMicro(prepared.micro[i] ?? 0) }
    })
    const deniedMetric = result.deniedIndex >= 0 ? (prepared.metrics[result.deniedIndex] ?? null) : null
    if (deniedMetric && this.#denials && mode === 'consume' && prepared.metrics.length === 1 && !result.replayed
      && METRICS[deniedMetric].period === 'day') {
      const limit = result.limits[0]
      if (limit !== null && limit !== undefined && answerTier === tier) {
        this.#denials.remember(id, day, deniedMetric, { tier, current: result.current[0] ?? 0, limit })
      }
    }
    return {
      allowed: result.outcome === 'allowed',
      reason: deniedMetric ? denialReason(deniedMetric) : null,
      deniedMetric,
      tier: answerTier,
      day: answerDay,
      metrics,
      resetsAt: this.#earliestReset(prepared.metrics, answerNow),
      replayed: result.replayed,
    }
  }

  /**
   * A single-metric consume of a daily metric already denied for this user, tier and limit in the
   * last second, answered without Redis (it can only deny). Idempotent calls always go to Redis.
   */
  #rememberedDenial(
    mode: 'consume' | 'increment', userId: string, day: string, tier: string, limits: TierLimits, prepared: Prepared,
    idempotencyKey: string | undefined, now: number,
  ): ConsumeResult | undefined {
    if (!this.#denials || mode !== 'consume' || idempotencyKey !== undefined || prepared.metrics.length !== 1) return undefined
    const metric = prepared.metrics[0] as MetricName
    const amount = prepared.micro[0] ?? 0
    const denial = this.#denials.check(userId, day, metric, amount, tier, limits[metric])
    if (!denial) return undefined
    if (denial.answer?.amount === amount) return denial.answer.result
    const result: ConsumeResult = Object.freeze({
      allowed: false,
      reason: denialReason(metric),
      deniedMetric: metric,
      tier,
      day,
      metrics: Object.freeze({ [metric]: Object.freeze({ ...state(metric, denial.current, denial.limit), amount: fromMicro(amount) }) }),
      resetsAt: this.#earliestReset(prepared.metrics, now),
      replayed: false,
    })
    denial.answer = { amount, result }
    return result
  }

  /** One store call; null when Redis is unavailable and the fail mode is open. */
  async #apply(
    mode: Mode, userId: string, tier: string, limits: TierLimits, prepared: Prepared, now: number, idempotencyKey: string | undefined,
  ): Promise<ApplyResult | null> {
    const items: ApplyItem[] = prepared.metrics.map((m, i) => ({
      field: METRICS[m].field,
      amount: prepared.micro[i] ?? 0,
      // The script compares only for check/consume; increment carries the limit for the answer.
      limit: limits[m],
    }))
    try {
      return await this.#o.store.apply({
        mode,
        userId,
        day: utcDay(now),
        now,
        items,
        idempotencyKey,
        context: `${utcDay(now)} ${tier}`,
        fingerprint: idempotencyKey === undefined
          ? undefined
          : `${mode}|${prepared.metrics.map((m, i) => `${m}=${prepared.micro[i]}`).join(';')}`,
        deadline: this.#deadlineFn,
      })
    } catch (err) {
      const unavailable = this.#unavailable(err)
      if (this.#o.failMode === 'open') {
        this.#o.logger?.warn({ err: unavailable.message, userId, mode }, 'usage decision allowed without redis (USAGE_FAIL_MODE=open)')
        return null
      }
      throw unavailable
    }
  }

  #unavailable(err: unknown): Error {
    if (err instanceof CounterUnavailableError) return new UsageUnavailableError(undefined, { cause: err })
    return err instanceof Error ? err : new Error(String(err))
  }


  /** Validates metrics and amounts; returns them in registry order (the order denials are named in). */
  #prepare(amounts: Amounts, allowNegative: boolean): Prepared {
    if (amounts === null || typeof amounts !== 'object') throw new InvalidAmountError('metrics must be an object', 'metrics')
    const names = Object.keys(amounts)
    if (names.length === 0) throw new InvalidAmountError('at least one metric is required', 'metrics')
    for (const name of names) {
      if (!isMetricName(name)) {
        throw new InvalidAmountError(`unknown metric "${name}"; expected one of ${METRIC_NAMES.join(', ')}`, 'metric')
      }
    }
    const metrics = METRIC_NAMES.filter((m) => Object.hasOwn(amounts, m))
    const single = metrics.length === 1
    const micro = metrics.map((m) =>
      toMicro(m, amounts[m], { allowNegative, field: single ? 'amount' : `metrics.${m}` }))
    return { metrics, micro }
  }

  async #tier(userId: string): Promise<string> {
    const cached = this.#o.limits.cachedUserTier(userId)
    if (cached !== undefined) return cached
    try {
      return await this.#o.limits.userTier(userId)
    } catch (err) {
      this.#o.logger?.error({ err: (err as Error).message, userId }, 'cannot read the user tier from postgres')
      throw new UsageUnavailableError('Usage tracking is temporarily unavailable (user directory)', { cause: err })
    }
  }

  #limitsOf(tier: string): TierLimits {
    const limits = this.#o.limits.tierLimits(tier)
    if (!limits) throw new UsageUnavailableError(`Tier "${tier}" has no row in usage_limits`)
    return limits
  }

  #resetsAt(metric: MetricName, now: number): string | null {
    return METRICS[metric].period === 'day' ? nextMidnightIso(now) : null
  }

  #earliestReset(metrics: MetricName[], now: number): string | null {
    return metrics.some((m) => METRICS[m].period === 'day') ? nextMidnightIso(now) : null
  }

  #degradedDecision(metric: MetricName, amount: number, tier: string, now: number): Decision {
    const limit = this.#o.limits.tierLimits(tier)?.[metric] ?? null
    return {
      allowed: true,
      reason: null,
      metric,
      amount,
      current: null,
      limit: limit === null ? null : fromMicro(limit),
      remaining: null,
      tier,
      resetsAt: this.#resetsAt(metric, now),
      degraded: true,
    }
  }
}

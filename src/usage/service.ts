/**
 * The usage service: the hot path behind `app.usage` and every user route. It validates input,
 * turns display amounts into micro-units once, looks up the user's tier (in-process cache), makes
 * one CounterStore call, and turns the answer back into display units. The fail mode of
 * USAGE_FAIL_MODE is applied here, in one place. Admin work (resets, tier and limit changes)
 * lives in admin.ts.
 */
import type { Logger } from 'pino'
import type { Clock } from '../clock.ts'
import { nextMidnightIso, utcDay } from '../clock.ts'
import type { FailMode } from '../config.ts'
import { CounterUnavailableError } from '../counters/store.ts'
import type { CounterStore, DecisionAnswer, DecisionMode, MetricAmount } from '../counters/store.ts'
import type { LimitsCache } from '../limits/limits-cache.ts'
import type { TierLimits } from '../limits/tier-limits.ts'
import { METRIC_NAMES, METRICS, fromMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import {
  checkIdempotencyKey, denialReason, fingerprint, metricState, normalizeUserId, prepareAmounts, prepareFixed,
} from './amounts.ts'
import type { PreparedAmounts } from './amounts.ts'
import { degradedResult, resetsAt } from './degraded.ts'
import { DenyCache } from './deny-cache.ts'
import type { Lead } from './deny-cache.ts'
import { IdempotencyConflictError, IdempotencyKeyLimitError, TotalTooLargeError, UsageUnavailableError } from './errors.ts'
import { Reservations } from './reservations.ts'
import type { HeldReservation, ReserveOptions } from './reservations.ts'
import type { Amounts, CallOptions, ConsumeResult, ConsumedMetric, Decision, MetricState, UsageStatus } from './types.ts'

export { IdempotencyConflictError }
export { DAILY_METRICS, denialReason, normalizeUserId } from './amounts.ts'

export interface UsageServiceOptions {
  store: CounterStore
  limits: LimitsCache
  clock: Clock
  failMode: FailMode
  logger?: Pick<Logger, 'warn' | 'error'>
  /** Answer repeated denials of daily limits from memory for up to this long (0 = off). @default 1000 */
  denyCacheMs?: number
  /** Where decisions, fail-open admissions and deny-cache hits are counted (telemetry.ts). @default none */
  telemetry?: UsageTelemetry
}

/** The calls this service makes to the telemetry seam (the engine passes its Telemetry). */
export interface UsageTelemetry {
  decision(metrics: readonly string[], outcome: 'allowed' | 'denied' | 'error', seconds: number): void
  failOpen(): void
  denyCacheHit(metric: string): void
}

const NO_TELEMETRY: UsageTelemetry = { decision() {}, failOpen() {}, denyCacheHit() {} }

type SpendMode = 'consume' | 'increment'

export class UsageService {
  readonly #options: UsageServiceOptions
  readonly #denials: DenyCache | undefined
  readonly #telemetry: UsageTelemetry
  /** Reservations (holds): reserve an estimate, then commit the actual or cancel. */
  readonly reservations: Reservations

  constructor(options: UsageServiceOptions) {
    this.#options = options
    this.#telemetry = options.telemetry ?? NO_TELEMETRY
    this.reservations = new Reservations({
      clock: options.clock,
      tierOf: (id) => this.#tier(id),
      limitsOf: (tier) => this.#limitsOf(tier),
      decide: async (request) => {
        const answer = await options.store.decide(request).catch((err: unknown) => { throw unavailable(err) })
        // A settled hold frees room: a denial remembered while it was held is stale now.
        if (request.mode !== 'reserve') this.#denials?.forget(request.userId)
        return answer
      },
    })
    const denyMs = options.denyCacheMs ?? 1000
    this.#denials = denyMs > 0 ? new DenyCache({ ttlMs: denyMs }) : undefined
    if (this.#denials) {
      const denials = this.#denials
      options.limits.onInvalidate((userId) => denials.forget(userId))
    }
  }

  get clock(): Clock {
    return this.#options.clock
  }

  /** Would `amount` of `metric` be allowed now? Changes nothing. */
  async checkLimit(userId: string, metric: MetricName, amount = 1): Promise<Decision> {
    const id = normalizeUserId(userId)
    const prepared = prepareAmounts({ [metric]: amount }, false)
    const tier = await this.#tier(id)
    const limits = this.#limitsOf(tier)
    const now = this.#options.clock.now()
    const answer = await this.#decide('check', id, tier, limits, prepared, now, undefined)
    if (answer === null) return this.#degradedDecision(metric, amount, tier, now)
    const state = metricState(metric, answer.current[0] ?? 0, answer.limits[0] ?? null)
    const allowed = answer.outcome === 'allowed'
    return {
      allowed,
      reason: allowed ? null : denialReason(metric),
      metric,
      amount: fromMicro(prepared.micro[0] ?? 0),
      current: state.current,
      limit: state.limit,
      remaining: state.remaining,
      tier,
      resetsAt: resetsAt([metric], now),
    }
  }

  /** Atomic check-and-increment of one or several metrics: all or nothing. */
  consume(userId: string, amounts: Amounts, options: CallOptions = {}): Promise<ConsumeResult> {
    return this.#spend('consume', userId, amounts, options)
  }

  /** Records actual usage unconditionally (storage may be negative: data deleted). */
  incrementUsage(userId: string, metric: MetricName, amount: number, options: CallOptions = {}): Promise<ConsumeResult> {
    return this.#spend('increment', userId, { [metric]: amount }, options)
  }

  /** Gives back what a consume took (a guarded handler failed), on the day it was taken. */
  async refund(userId: string, amounts: Amounts, day: string): Promise<void> {
    const id = normalizeUserId(userId)
    const prepared = prepareAmounts(amounts, false)
    const now = this.#options.clock.now()
    const metrics = prepared.metrics.map((metric, i) => ({ metric, amount: prepared.micro[i] ?? 0, limit: null }))
    this.#denials?.forget(id)
    try {
      await this.#options.store.decide({ mode: 'refund', userId: id, day, now, metrics })
      // Again once applied: a denial Redis gave meanwhile (before the refund ran) is stale now.
      this.#denials?.forget(id)
    } catch (err) {
      if (err instanceof CounterUnavailableError) {
        // The request already failed for its own reason; losing a refund over-counts, never over-admits.
        this.#options.logger?.warn({ err: err.message, userId: id, amounts }, 'usage refund lost: redis unavailable')
        return
      }
      throw err
    }
  }

  /**
   * Holds `amount` of a daily metric against today's limit until committed, cancelled or lapsed
   * (`ttlSeconds`, default 300): `const hold = await reserve(...)`, then `hold.commit(actual)` or
   * `hold.cancel()`. Denied: `allowed` false, and commit/cancel reject (nothing is held).
   */
  reserve(userId: string, metric: MetricName, amount: number, options: ReserveOptions = {}): Promise<HeldReservation> {
    return this.reservations.hold(userId, metric, amount, options)
  }

  /** Today's usage of every metric. */
  async status(userId: string): Promise<UsageStatus> {
    const id = normalizeUserId(userId)
    const tier = await this.#tier(id)
    const limits = this.#limitsOf(tier)
    const now = this.#options.clock.now()
    const day = utcDay(now)
    const metrics: MetricAmount[] = METRIC_NAMES.map((metric) => ({ metric, amount: 0, limit: limits[metric] }))
    let answer: DecisionAnswer
    try {
      answer = await this.#options.store.decide({ mode: 'check', userId: id, day, now, metrics })
    } catch (err) {
      throw unavailable(err)
    }
    const states = {} as Record<MetricName, MetricState>
    METRIC_NAMES.forEach((m, i) => {
      const reserved = answer.reserved?.[i] ?? 0
      const state = metricState(m, answer.current[i] ?? 0, limits[m])
      // What is held counts against the limit: remaining is what a consume may still take.
      const limit = limits[m]
      if (reserved > 0 && limit !== null) state.remaining = fromMicro(Math.max(0, limit - (answer.current[i] ?? 0) - reserved))
      // The gauge is not reservable: only daily metrics carry `reserved`.
      states[m] = METRICS[m].period === 'day' ? { ...state, reserved: fromMicro(reserved) } : state
    })
    return { user_id: id, tier, date: day, resets_at: nextMidnightIso(now), metrics: states }
  }

  /**
   * Drops remembered denials — of one user, or of everyone (null) — after their counters went
   * down (a manual reset).
   */
  forgetDenials(userId: string | null): void {
    this.#denials?.forget(userId)
  }

  #spend(mode: SpendMode, userId: string, amounts: Amounts, options: CallOptions): Promise<ConsumeResult> {
    let id: string
    let prepared: PreparedAmounts
    let tier: string | undefined
    try {
      id = normalizeUserId(userId)
      checkIdempotencyKey(options.idempotencyKey)
      prepared = mode === 'increment' ? prepareAmounts(amounts, true) : prepareFixed(amounts)
      tier = this.#options.limits.cachedUserTier(id)
    } catch (err) {
      return Promise.reject(err as Error)
    }
    // A cached tier (the steady state) costs no await.
    return tier === undefined
      ? this.#tier(id).then((t) => this.#spendAs(mode, id, t, prepared, options.idempotencyKey))
      : this.#spendAs(mode, id, tier, prepared, options.idempotencyKey)
  }

  async #spendAs(
    mode: SpendMode, id: string, tier: string, prepared: PreparedAmounts, idempotencyKey: string | undefined,
  ): Promise<ConsumeResult> {
    const limits = this.#limitsOf(tier)
    const now = this.#options.clock.now()
    // The deny cache knows single-metric consumes of a daily limit (see DenyCache).
    const metric = prepared.metrics[0] as MetricName
    const denials = this.#denials
    const denyKey = denials !== undefined && mode === 'consume' && prepared.metrics.length === 1
      && METRICS[metric].period === 'day' && limits[metric] !== null
      ? DenyCache.key(id, utcDay(now), metric)
      : undefined
    // Idempotent calls always go to the store (a replay must answer as the first call did).
    if (denyKey === undefined || denials === undefined || idempotencyKey !== undefined) {
      const answer = await this.#decide(mode, id, tier, limits, prepared, now, idempotencyKey)
      return this.#answer(id, tier, limits, prepared, now, answer, denyKey)
    }
    const remembered = this.#rememberedDenial(denyKey, tier, limits, prepared, now)
    if (remembered) return remembered
    const shared = denials.coalesce(denyKey, prepared.micro[0] as number, tier, limits[metric])
    if (shared?.follow) {
      // An identical decision, likely a denial, is in flight: its denial is ours too. Followed
      // once only: after an admission every follower asks the store at once, as it would have.
      await shared.follow.settled()
      const denied = this.#rememberedDenial(denyKey, tier, limits, prepared, now)
      if (denied) return denied
    }
    const lead = shared?.led
    try {
      const answer = await this.#decide(mode, id, tier, limits, prepared, now, undefined)
      return this.#answer(id, tier, limits, prepared, now, answer, denyKey, lead)
    } finally {
      // Followers go on once the lead's denial is remembered (or it was not a denial).
      if (lead) denials.end(lead)
    }
  }

  /**
   * The store's answer as the service gives it. A consume that may use the deny cache (`denyKey`)
   * remembers a denial, and an admission that left less than its amount as a hint.
   */
  #answer(
    id: string, tier: string, limits: TierLimits, prepared: PreparedAmounts, now: number,
    answer: DecisionAnswer | null, denyKey?: string, lead?: Lead,
  ): ConsumeResult {
    const day = utcDay(now)
    if (answer === null) return degradedResult(prepared, tier, day, limits, now)
    if (answer.outcome === 'key-reused') throw new IdempotencyConflictError()
    if (answer.outcome === 'too-large') {
      const metric = prepared.metrics[answer.deniedIndex] ?? (prepared.metrics[0] as MetricName)
      throw new TotalTooLargeError(metric, prepared.metrics.length === 1 ? 'amount' : `metrics.${metric}`)
    }
    if (answer.outcome === 'too-many-keys') {
      throw new IdempotencyKeyLimitError(Math.max(1, Math.ceil((answer.retryAfterMs ?? 1000) / 1000)))
    }
    // A replay answers as the first call did: its tier and its day.
    const answerTier = answer.replayed && answer.context ? answer.context.tier : tier
    const answerDay = answer.replayed && answer.context ? answer.context.day : day
    const answerNow = answerDay === day ? now : Date.parse(`${answerDay}T12:00:00Z`)
    const metrics: Partial<Record<MetricName, ConsumedMetric>> = {}
    for (let i = 0; i < prepared.metrics.length; i++) {
      const m = prepared.metrics[i] as MetricName
      const state = metricState(m, answer.current[i] ?? 0, answer.limits[i] ?? null)
      metrics[m] = { current: state.current, limit: state.limit, remaining: state.remaining, unit: state.unit, period: state.period, amount: fromMicro(prepared.micro[i] ?? 0) }
    }
    const deniedMetric = answer.deniedIndex >= 0 ? (prepared.metrics[answer.deniedIndex] ?? null) : null
    if (denyKey !== undefined && this.#denials && !answer.replayed) this.#observe(this.#denials, id, denyKey, tier, prepared, answer, lead)
    return {
      allowed: answer.outcome === 'allowed',
      reason: deniedMetric ? denialReason(deniedMetric) : null,
      deniedMetric,
      tier: answerTier,
      day: answerDay,
      metrics,
      resetsAt: resetsAt(prepared.metrics, answerNow),
      replayed: answer.replayed,
    }
  }

  /**
   * Feeds the deny cache from a fresh answer to a single-metric consume of a daily limit: a denial
   * is remembered; an admission that left less than the amount is kept as a hint.
   */
  #observe(
    denials: DenyCache, userId: string, key: string, tier: string, prepared: PreparedAmounts, answer: DecisionAnswer, lead: Lead | undefined,
  ): void {
    const limit = answer.limits[0]
    const current = answer.current[0]
    if (limit === null || limit === undefined || current === undefined) return
    if (answer.outcome === 'denied') denials.remember(userId, key, { tier, current, limit }, lead)
    else if (answer.outcome === 'allowed' && current + (prepared.micro[0] ?? 0) > limit) denials.hint(userId, key, { tier, current, limit })
  }

  /**
   * A single-metric consume of a daily metric already denied for this user, tier and limit in the
   * last second, answered without the store (it can only deny). Idempotent calls always go to it.
   */
  #rememberedDenial(key: string, tier: string, limits: TierLimits, prepared: PreparedAmounts, now: number): ConsumeResult | undefined {
    const metric = prepared.metrics[0] as MetricName
    const amount = prepared.micro[0] ?? 0
    const denial = this.#denials?.check(key, amount, tier, limits[metric])
    if (!denial) return undefined
    this.#telemetry.denyCacheHit(metric)
    if (denial.answer?.amount === amount) return denial.answer.result
    const result: ConsumeResult = Object.freeze({
      allowed: false,
      reason: denialReason(metric),
      deniedMetric: metric,
      tier,
      day: utcDay(now),
      metrics: Object.freeze({ [metric]: Object.freeze({ ...metricState(metric, denial.current, denial.limit), amount: fromMicro(amount) }) }),
      resetsAt: resetsAt(prepared.metrics, now),
      replayed: false,
    })
    denial.answer = { amount, result }
    return result
  }

  /** One store call; null when the store is unavailable and the fail mode is open. */
  async #decide(
    mode: DecisionMode, userId: string, tier: string, limits: TierLimits, prepared: PreparedAmounts, now: number,
    idempotencyKey: string | undefined,
  ): Promise<DecisionAnswer | null> {
    const day = utcDay(now)
    // The store compares only for check/consume; increment carries the limit for the answer.
    const metrics = prepared.metrics.map((metric, i) => ({ metric, amount: prepared.micro[i] ?? 0, limit: limits[metric] }))
    const idempotency = idempotencyKey === undefined
      ? undefined
      : { key: idempotencyKey, fingerprint: fingerprint(mode, prepared), context: { day, tier } }
    const started = performance.now()
    try {
      const answer = await this.#options.store.decide({ mode, userId, day, now, metrics, idempotency })
      this.#telemetry.decision(prepared.metrics, answer.outcome === 'allowed' ? 'allowed' : 'denied', (performance.now() - started) / 1000)
      return answer
    } catch (err) {
      this.#telemetry.decision(prepared.metrics, 'error', (performance.now() - started) / 1000)
      const error = unavailable(err)
      if (this.#options.failMode === 'open') {
        this.#telemetry.failOpen()
        this.#options.logger?.warn({ err: error.message, userId, mode }, 'usage decision allowed without redis (USAGE_FAIL_MODE=open)')
        return null
      }
      throw error
    }
  }

  async #tier(userId: string): Promise<string> {
    const cached = this.#options.limits.cachedUserTier(userId)
    if (cached !== undefined) return cached
    try {
      return await this.#options.limits.userTier(userId)
    } catch (err) {
      this.#options.logger?.error({ err: (err as Error).message, userId }, 'cannot read the user tier from postgres')
      throw new UsageUnavailableError('Usage tracking is temporarily unavailable (user directory)', { cause: err })
    }
  }

  #limitsOf(tier: string): TierLimits {
    const limits = this.#options.limits.tierLimits(tier)
    if (!limits) throw new UsageUnavailableError(`Tier "${tier}" has no row in usage_limits`)
    return limits
  }

  #degradedDecision(metric: MetricName, amount: number, tier: string, now: number): Decision {
    const limit = this.#options.limits.tierLimits(tier)?.[metric] ?? null
    return {
      allowed: true,
      reason: null,
      metric,
      amount,
      current: null,
      limit: limit === null ? null : fromMicro(limit),
      remaining: null,
      tier,
      resetsAt: resetsAt([metric], now),
      degraded: true,
    }
  }
}

/** A store failure as the service reports it: UsageUnavailableError when the store cannot decide now. */
export function unavailable(err: unknown): Error {
  if (err instanceof CounterUnavailableError) return new UsageUnavailableError(undefined, { cause: err })
  return err instanceof Error ? err : new Error(String(err))
}

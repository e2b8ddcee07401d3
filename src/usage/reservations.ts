/**
 * Reservations (holds) for variable usage: reserve an estimate atomically with the limit check,
 * do the work, then commit the actual amount or cancel. While held, the estimate counts against
 * the limit, so concurrent jobs can no longer all pass a check and overrun it together (the
 * spec's pattern 3). A hold lapses by itself after its ttl; holds never reach daily_usage.
 *
 * A reservation id names its day and metric ("r<YYYYMMDD><d|a|c><22 random characters>"), so a
 * commit finds the hold in one store call, whatever day it comes on. Reservations always fail
 * closed: a hold granted without the store could not be committed or counted.
 */
import { randomBytes } from 'node:crypto'
import type { Clock } from '../clock.ts'
import { utcDay } from '../clock.ts'
import type { DecisionAnswer, DecisionRequest } from '../counters/store.ts'
import type { TierLimits } from '../limits/tier-limits.ts'
import { InvalidAmountError, METRICS, fromMicro, toMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import { checkIdempotencyKey, denialReason, metricState, normalizeUserId } from './amounts.ts'
import {
  IdempotencyConflictError, IdempotencyKeyLimitError, ReservationNotFoundError, ReservationSettledError, TotalTooLargeError,
} from './errors.ts'
import type { ConsumeResult, MetricState } from './types.ts'

/** Default and bounds of `ttl_seconds`. */
export const DEFAULT_HOLD_TTL_S = 300
export const MAX_HOLD_TTL_S = 86_400

const METRIC_CODE: Partial<Record<MetricName, string>> = { deployments: 'd', api_calls: 'a', compute_hours: 'c' }
const CODE_METRIC: Record<string, MetricName> = { d: 'deployments', a: 'api_calls', c: 'compute_hours' }
const RESERVATION_ID = /^r(\d{4})(\d{2})(\d{2})([dac])[A-Za-z0-9_-]{22}$/

export interface ReserveOptions {
  /** Seconds until the hold lapses by itself (1 to 86400). @default 300 */
  ttlSeconds?: number
  idempotencyKey?: string
}

/** A granted (or denied) reservation, in display units. */
export interface ReservationResult {
  allowed: boolean
  /** Set when allowed. */
  reservationId: string | null
  metric: MetricName
  amount: number
  /** ISO time the hold lapses; null when denied. */
  expiresAt: string | null
  tier: string
  day: string
  /** The metric's usage (not counting holds), its limit, and what is left after every hold. */
  state: MetricState & { reserved: number }
  /** The answer of an earlier call with the same idempotency key. */
  replayed: boolean
  /** A denial as the 429 of consume tells it. */
  denial?: ConsumeResult
}

export interface SettleResult {
  reservationId: string
  metric: MetricName
  day: string
  /** What the reservation held. */
  held: number
  /** Commit: the actual amount recorded; cancel: 0. */
  amount: number
  /** Commit: the actual amount was more than was held (recorded anyway: the work happened). */
  exceededHold: boolean
  state: MetricState & { reserved: number }
  /** A repeat of the first commit (or cancel): its answer, nothing recorded now. */
  replayed: boolean
}

export interface ReservationDeps {
  clock: Clock
  tierOf(userId: string): Promise<string>
  limitsOf(tier: string): TierLimits
  decide(request: DecisionRequest): Promise<DecisionAnswer>
}

/** The metric and day a reservation id names; ReservationNotFoundError when it names none. */
export function parseReservationId(id: string): { day: string; metric: MetricName } {
  const match = typeof id === 'string' ? RESERVATION_ID.exec(id) : null
  if (match === null) throw new ReservationNotFoundError(String(id))
  return { day: `${match[1]}-${match[2]}-${match[3]}`, metric: CODE_METRIC[match[4] as string] as MetricName }
}

function newReservationId(day: string, metric: MetricName): string {
  return `r${day.replaceAll('-', '')}${METRIC_CODE[metric] as string}${randomBytes(16).toString('base64url').slice(0, 22)}`
}

function stateOf(metric: MetricName, current: number, limit: number | null, reserved: number): MetricState & { reserved: number } {
  const state = metricState(metric, current, limit)
  return { ...state, remaining: limit === null ? null : fromMicro(Math.max(0, limit - current - reserved)), reserved: fromMicro(reserved) }
}

/** A granted reservation, as the library API hands it out. */
export interface Hold {
  readonly id: string
  /** Releases the hold and records the actual amount (>= 0). A second call replays the first answer. */
  commit(actual: number): Promise<SettleResult>
  /** Releases the hold; records nothing. */
  cancel(): Promise<SettleResult>
}

/** A reservation's answer with its settlement: commit or cancel it (when granted). */
export interface HeldReservation extends ReservationResult {
  hold: Hold | null
  commit(actual: number): Promise<SettleResult>
  cancel(): Promise<SettleResult>
}

export class Reservations {
  constructor(private readonly deps: ReservationDeps) {}

  /**
   * reserve() as the library hands it out (DESIGN 1.9): `const hold = await reserve(...)`, then
   * `hold.commit(actual)` or `hold.cancel()`. A denied one (`allowed: false`) has nothing to settle:
   * its commit and cancel reject. `hold` is the same methods, or null when denied.
   */
  async hold(userId: string, metric: MetricName, amount: number, options: ReserveOptions = {}): Promise<HeldReservation> {
    const result = await this.reserve(userId, metric, amount, options)
    const id = result.reservationId
    const hold: Hold | null = id === null ? null : {
      id,
      commit: (actual: number) => this.commit(userId, id, actual),
      cancel: () => this.cancel(userId, id),
    }
    const denied = (): Promise<never> => Promise.reject(new Error(`the reservation was denied (${result.denial?.reason ?? 'over the limit'}): nothing is held`))
    return { ...result, hold, commit: hold ? hold.commit : denied, cancel: hold ? hold.cancel : denied }
  }

  async reserve(userId: string, metric: MetricName, amount: number, options: ReserveOptions = {}): Promise<ReservationResult> {
    const id = normalizeUserId(userId)
    if (METRICS[metric]?.period !== 'day') {
      throw new InvalidAmountError(`metric must be a daily metric (deployments, api_calls, compute_hours); ${String(metric)} cannot be reserved`, 'metric')
    }
    const micro = toMicro(metric, amount, { field: 'amount' })
    const ttl = options.ttlSeconds ?? DEFAULT_HOLD_TTL_S
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_HOLD_TTL_S) {
      throw new InvalidAmountError(`ttl_seconds must be a whole number from 1 to ${MAX_HOLD_TTL_S}`, 'ttl_seconds')
    }
    checkIdempotencyKey(options.idempotencyKey)
    const tier = await this.deps.tierOf(id)
    const limit = this.deps.limitsOf(tier)[metric]
    const now = this.deps.clock.now()
    const day = utcDay(now)
    const hold = { id: newReservationId(day, metric), expiresAt: now + ttl * 1000 }
    const idempotency = options.idempotencyKey === undefined
      ? undefined
      : { key: options.idempotencyKey, fingerprint: `reserve:${metric}:${micro}:${ttl}`, context: { day, tier, hold } }
    const answer = await this.deps.decide({ mode: 'reserve', userId: id, day, now, metrics: [{ metric, amount: micro, limit }], hold, idempotency })
    if (answer.outcome === 'key-reused') throw new IdempotencyConflictError()
    if (answer.outcome === 'too-large') throw new TotalTooLargeError(metric, 'amount')
    if (answer.outcome === 'too-many-keys') throw new IdempotencyKeyLimitError(Math.max(1, Math.ceil((answer.retryAfterMs ?? 1000) / 1000)))
    const granted = answer.replayed ? answer.context?.hold : hold
    const answerTier = answer.replayed ? (answer.context?.tier ?? tier) : tier
    const answerDay = answer.replayed ? (answer.context?.day ?? day) : day
    const usedLimit = answer.limits[0] ?? null
    const current = answer.current[0] ?? 0
    const state = stateOf(metric, current, usedLimit, answer.reserved?.[0] ?? 0)
    const allowed = answer.outcome === 'allowed'
    const result: ReservationResult = {
      allowed,
      reservationId: allowed && granted ? granted.id : null,
      metric,
      amount,
      expiresAt: allowed && granted ? new Date(granted.expiresAt).toISOString() : null,
      tier: answerTier,
      day: answerDay,
      state,
      replayed: answer.replayed,
    }
    if (!allowed) {
      result.denial = {
        allowed: false, reason: denialReason(metric), deniedMetric: metric, tier: answerTier, day: answerDay,
        metrics: { [metric]: { ...metricState(metric, current, usedLimit), remaining: state.remaining, amount } },
        resetsAt: new Date(Date.parse(`${answerDay}T00:00:00Z`) + 86_400_000).toISOString(),
        replayed: answer.replayed,
      }
    }
    return result
  }

  /** Releases the hold and records `amount` (>= 0; more than held is recorded, and said). */
  commit(userId: string, reservationId: string, amount: number): Promise<SettleResult> {
    return this.#settle('commit', userId, reservationId, amount)
  }

  /** Releases the hold; records nothing. */
  cancel(userId: string, reservationId: string): Promise<SettleResult> {
    return this.#settle('cancel', userId, reservationId, 0)
  }

  async #settle(mode: 'commit' | 'cancel', userId: string, reservationId: string, amount: number): Promise<SettleResult> {
    const id = normalizeUserId(userId)
    const { day, metric } = parseReservationId(reservationId)
    let micro = 0
    if (mode === 'commit') {
      // 0 is a valid actual (the job used nothing); toMicro refuses 0, so it checks the rest.
      if (amount !== 0) micro = toMicro(metric, amount, { field: 'amount' })
      else if (typeof amount !== 'number') throw new InvalidAmountError('amount must be a number', 'amount')
    }
    const tier = await this.deps.tierOf(id)
    const limit = this.deps.limitsOf(tier)[metric]
    const now = this.deps.clock.now()
    const hold = { id: reservationId, expiresAt: now + 1 }
    const answer = await this.deps.decide({ mode, userId: id, day, now, metrics: [{ metric, amount: micro, limit }], hold })
    if (answer.outcome === 'not-found') throw new ReservationNotFoundError(reservationId)
    if (answer.outcome === 'conflict') throw new ReservationSettledError(reservationId, mode)
    if (answer.outcome === 'too-large') throw new TotalTooLargeError(metric, 'amount')
    const held = answer.held ?? 0
    const current = answer.current[0] ?? 0
    return {
      reservationId,
      metric,
      day,
      held: fromMicro(held),
      amount: fromMicro(answer.committed ?? 0),
      exceededHold: (answer.committed ?? 0) > held,
      state: stateOf(metric, current, answer.limits[0] ?? null, answer.reserved?.[0] ?? 0),
      replayed: answer.replayed,
    }
  }
}

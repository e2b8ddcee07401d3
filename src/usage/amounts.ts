/**
 * Input checks and unit conversions shared by the usage and admin services: user ids, idempotency
 * keys, amounts (display units -> micro-units, once, in registry order), and the display form of
 * a metric's state.
 */
import { isUuid } from '../ids.ts'
import { InvalidAmountError, METRIC_NAMES, METRICS, fromMicro, isMetricName, toMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import type { Amounts, MetricState } from './types.ts'

const IDEMPOTENCY_KEY = /^[\x20-\x7e]{1,128}$/

/** What a manual reset without `metric` zeroes: today's daily counters (the storage gauge is not a daily count). */
export const DAILY_METRICS: readonly MetricName[] = METRIC_NAMES.filter((m) => METRICS[m].period === 'day')

/** Lower-case UUID, or InvalidAmountError naming `field`. */
export function normalizeUserId(userId: string, field = 'user_id'): string {
  if (!isUuid(userId)) throw new InvalidAmountError(`${field} must be a UUID`, field)
  return userId.toLowerCase()
}

export function checkIdempotencyKey(key: string | undefined): void {
  if (key === undefined) return
  if (typeof key !== 'string' || !IDEMPOTENCY_KEY.test(key)) {
    throw new InvalidAmountError('idempotency_key must be 1-128 printable ASCII characters', 'idempotency_key')
  }
}

export function denialReason(metric: MetricName): string {
  return METRICS[metric].period === 'day' ? `Daily ${metric} limit exceeded` : `${metric[0]?.toUpperCase()}${metric.slice(1)} limit exceeded`
}

/** A metric's usage in display units; `current`, `limit` in micro-units (null limit = unlimited). */
export function metricState(metric: MetricName, current: number, limit: number | null): MetricState {
  return {
    current: fromMicro(current),
    limit: limit === null ? null : fromMicro(limit),
    remaining: limit === null ? null : fromMicro(Math.max(0, limit - current)),
    unit: METRICS[metric].unit,
    period: METRICS[metric].period,
  }
}

/** Validated amounts in registry order (the order denials are named in), in micro-units. */
export interface PreparedAmounts {
  metrics: MetricName[]
  micro: number[]
}

/** Validates metrics and amounts; InvalidAmountError names the field at fault. */
export function prepareAmounts(amounts: Amounts, allowNegative: boolean): PreparedAmounts {
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

/** Identifies a call's parameters, so an idempotency key reused for another call is refused. */
export function fingerprint(mode: string, prepared: PreparedAmounts): string {
  return `${mode}|${prepared.metrics.map((m, i) => `${m}=${prepared.micro[i]}`).join(';')}`
}

/**
 * Prepared amounts of a consume. A frozen amounts object (a guard's, fixed at start-up) is
 * prepared once: a guarded request does not validate and convert the same amounts again.
 */
const preparedFrozen = new WeakMap<Amounts, PreparedAmounts>()

export function prepareFixed(amounts: Amounts): PreparedAmounts {
  if (amounts === null || typeof amounts !== 'object' || !Object.isFrozen(amounts)) return prepareAmounts(amounts, false)
  let prepared = preparedFrozen.get(amounts)
  if (prepared === undefined) {
    prepared = prepareAmounts(amounts, false)
    preparedFrozen.set(amounts, prepared)
  }
  return prepared
}

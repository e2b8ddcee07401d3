/**
 * The metric registry: the one place that knows which metrics exist, their units, periods and
 * how amounts are represented. Everything below the HTTP edge works in integer micro-units
 * (1 unit = 1_000_000 micro-units), so Redis and the decision logic never see a float.
 */

export const METRIC_NAMES = ['deployments', 'api_calls', 'compute_hours', 'storage'] as const
export type MetricName = (typeof METRIC_NAMES)[number]

export type MetricPeriod = 'day' | 'none'

export interface MetricDefinition {
  readonly name: MetricName
  readonly unit: 'count' | 'hours' | 'GB'
  /** `day`: resets at 00:00:00Z; `none`: a gauge that carries over days. */
  readonly period: MetricPeriod
  /** Count metrics accept whole numbers only. */
  readonly integer: boolean
  /** Only the storage gauge may be decremented (data deleted). */
  readonly allowsDecrement: boolean
  /** Column of `daily_usage` that records the metric. */
  readonly column: 'deployments_created' | 'api_calls' | 'compute_hours' | 'storage_gb'
  /** Column of `usage_limits` that holds the tier's limit. */
  readonly limitColumn:
    | 'max_deployments_per_day'
    | 'max_api_calls_per_day'
    | 'max_compute_hours_per_day'
    | 'max_storage_gb'
  /** Field of the per-user-day Redis hash (short names keep the hash small). */
  readonly field: 'd' | 'a' | 'c' | 's'
}

export const METRICS: Readonly<Record<MetricName, MetricDefinition>> = {
  deployments: {
    name: 'deployments', unit: 'count', period: 'day', integer: true, allowsDecrement: false,
    column: 'deployments_created', limitColumn: 'max_deployments_per_day', field: 'd',
  },
  api_calls: {
    name: 'api_calls', unit: 'count', period: 'day', integer: true, allowsDecrement: false,
    column: 'api_calls', limitColumn: 'max_api_calls_per_day', field: 'a',
  },
  compute_hours: {
    name: 'compute_hours', unit: 'hours', period: 'day', integer: false, allowsDecrement: false,
    column: 'compute_hours', limitColumn: 'max_compute_hours_per_day', field: 'c',
  },
  storage: {
    name: 'storage', unit: 'GB', period: 'none', integer: false, allowsDecrement: true,
    column: 'storage_gb', limitColumn: 'max_storage_gb', field: 's',
  },
}

/** Fixed-point scale: amounts carry at most 6 decimals. */
export const SCALE = 1_000_000
/** Largest amount accepted in one call, in units. */
export const MAX_AMOUNT = 1e9
/**
 * Largest total one metric may reach, in units: per user and day for daily metrics, for the
 * storage gauge at any time. An increment or consume that would pass it is refused and counts
 * nothing. Every layer holds it exactly: 9e15 micro-units is below 2^53 (~9.007e15), so Lua's
 * doubles, JS numbers and the script's "%.0f" text keep every micro-unit; the count columns of
 * daily_usage are bigint and the others numeric. Not 1e9: one call may carry up to 1e9 and
 * unlimited tiers add several a day (3e9 api_calls is a supported day). A sum compared against it
 * (at most 9e15 + 1e15) may round once past 2^53, but rounding keeps order, so it still compares
 * as over.
 */
export const MAX_TOTAL = 9e9
/** MAX_TOTAL in micro-units. */
export const MAX_TOTAL_MICRO = MAX_TOTAL * 1_000_000
export const MAX_DECIMALS = 6

export function isMetricName(value: unknown): value is MetricName {
  return typeof value === 'string' && (METRIC_NAMES as readonly string[]).includes(value)
}

/** Thrown for an amount or metric that must be refused before anything is counted. */
export class InvalidAmountError extends Error {
  override name = 'InvalidAmountError'
  constructor(
    message: string,
    /** The input field at fault, for a 400 that names it. */
    readonly field: string,
  ) {
    super(message)
  }
}

export interface ToMicroOptions {
  /** Accept a negative amount (storage `increment` only). */
  allowNegative?: boolean
  /** Name of the field in error messages. */
  field?: string
}

/**
 * Converts a display amount to integer micro-units, exactly, or throws InvalidAmountError.
 * `0.1` becomes 100000: the double closest to 0.1 times 1e6 rounds to the intended integer,
 * and converting back must give the same double, which rejects a 7th decimal.
 */
export function toMicro(metric: MetricName, amount: unknown, options: ToMicroOptions = {}): number {
  const field = options.field ?? 'amount'
  const def = METRICS[metric]
  if (typeof amount !== 'number') {
    throw new InvalidAmountError(`${field} must be a number`, field)
  }
  if (!Number.isFinite(amount)) throw new InvalidAmountError(`${field} must be a finite number`, field)
  if (Math.abs(amount) > MAX_AMOUNT) {
    throw new InvalidAmountError(`${field} must not exceed ${MAX_AMOUNT} in magnitude`, field)
  }
  if (amount === 0) throw new InvalidAmountError(`${field} must not be 0`, field)
  if (amount < 0 && !(options.allowNegative === true && def.allowsDecrement)) {
    throw new InvalidAmountError(`${field} must be greater than 0`, field)
  }
  if (def.integer && !Number.isInteger(amount)) {
    throw new InvalidAmountError(`${field} must be a whole number for ${metric} (unit: ${def.unit})`, field)
  }
  const micro = Math.round(amount * SCALE)
  if (micro / SCALE !== amount) {
    throw new InvalidAmountError(`${field} must have at most ${MAX_DECIMALS} decimal places`, field)
  }
  return micro
}

/** Integer micro-units to the JSON number shown to clients (9800000 -> 9.8). */
export function fromMicro(micro: number): number {
  return micro / SCALE
}

/**
 * A limit from Postgres (`int` or `numeric`, as text or number; NULL = unlimited) to micro-units.
 * Limits carry at most 6 decimals, like amounts.
 */
export function limitToMicro(value: string | number | null): number | null {
  if (value === null) return null
  const text = typeof value === 'number' ? String(value) : value
  // A limit no total can reach (set by plain SQL past MAX_TOTAL) acts as MAX_TOTAL: the same
  // answers, and the tier still loads instead of failing every decision.
  const whole = /^\s*(\d+)/.exec(text)?.[1]
  if (whole !== undefined && Number(whole) >= MAX_TOTAL) return MAX_TOTAL_MICRO
  return decimalTextToMicro(text)
}

/** Parses a non-negative decimal string ("12", "9.800000") into micro-units without floats. */
export function decimalTextToMicro(text: string): number {
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text.trim())
  if (!match) throw new Error(`not a decimal: ${text}`)
  const [, sign, whole = '0', frac = ''] = match
  const fracDigits = frac.replace(/0+$/, '')
  if (fracDigits.length > MAX_DECIMALS) throw new Error(`more than ${MAX_DECIMALS} decimals: ${text}`)
  const micro = Number(whole) * SCALE + Number(fracDigits.padEnd(MAX_DECIMALS, '0') || '0')
  // Beyond 2^53 micro-units (~9e9 units) doubles are no longer exact: refuse rather than round.
  if (!Number.isSafeInteger(micro)) throw new Error(`too large to be exact: ${text}`)
  return sign === '-' ? -micro : micro
}

/** Micro-units to an exact decimal string for Postgres numeric columns (1500000 -> "1.5"). */
export function microToDecimalText(micro: number): string {
  const sign = micro < 0 ? '-' : ''
  const abs = Math.abs(micro)
  const whole = Math.floor(abs / SCALE)
  const frac = String(abs % SCALE).padStart(MAX_DECIMALS, '0').replace(/0+$/, '')
  return frac ? `${sign}${whole}.${frac}` : `${sign}${whole}`
}

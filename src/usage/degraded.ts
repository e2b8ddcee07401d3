/**
 * Small pieces of the service's answers: when requested metrics reset, and the answer of a spend
 * admitted without the store (USAGE_FAIL_MODE=open).
 */
import { nextMidnightIso } from '../clock.ts'
import type { TierLimits } from '../limits/tier-limits.ts'
import { METRICS, fromMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import { metricState } from './amounts.ts'
import type { PreparedAmounts } from './amounts.ts'
import type { ConsumeResult, ConsumedMetric } from './types.ts'

/** Earliest reset among the metrics (ISO): the next UTC midnight, or null when only the gauge. */
export function resetsAt(metrics: readonly MetricName[], now: number): string | null {
  return metrics.some((m) => METRICS[m].period === 'day') ? nextMidnightIso(now) : null
}

/** The answer of a spend admitted without the store (USAGE_FAIL_MODE=open): nothing known of usage. */
export function degradedResult(prepared: PreparedAmounts, tier: string, day: string, limits: TierLimits, now: number): ConsumeResult {
  const metrics: Partial<Record<MetricName, ConsumedMetric>> = {}
  prepared.metrics.forEach((m, i) => {
    metrics[m] = { ...metricState(m, 0, limits[m]), current: null, remaining: null, amount: fromMicro(prepared.micro[i] ?? 0) }
  })
  return { allowed: true, reason: null, deniedMetric: null, tier, day, metrics, resetsAt: resetsAt(prepared.metrics, now), replayed: false, degraded: true }
}

/**
 * Threshold crossings (DESIGN 1.11), as every store computes them. A user-day keeps one bit per
 * daily metric and threshold. A decision that changes a metric reports a crossing when the new
 * value has reached the threshold and either its bit was not set or the value before was under it
 * (a changed limit moves the threshold: 8 of 10 set the bit, and after an upgrade to 50 a jump from
 * 8 to 40 still crosses 80 %); it sets the bit. A decision that finds the metric under a threshold
 * clears its bit (a refund, a raised limit, a reset), so it can cross again. Only decisions that
 * change a metric and know its limit look: a check changes nothing, an unlimited metric raises
 * nothing. A crossing may be reported again (a refund and a new consume): the history keeps one.
 *
 * The Redis store's decide.lua implements the same rule on the same bits (entry field "t"); both
 * compare whole micro-units the same way, so both report the same crossings.
 */
import { METRIC_NAMES } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import type { ThresholdCrossing } from './store.ts'

/** Percent thresholds that raise events, lowest first. */
export const THRESHOLDS = [80, 100] as const
export type Threshold = (typeof THRESHOLDS)[number]

/** Whether `value` has reached `percent` of `limit` (value * 5 >= limit * 4 for 80, as Lua compares). */
export function reachesThreshold(value: number, limit: number, percent: Threshold): boolean {
  return percent === 100 ? value >= limit : value * 5 >= limit * 4
}

/** The bit of a daily metric (registry index 0-2) and threshold in a user-day's crossed set. */
export function crossingBit(index: number, percent: Threshold): number {
  return 1 << (index * 2 + (percent === 100 ? 1 : 0))
}

/**
 * The crossed set after a daily metric (registry index 0-2) went from `before` to `value` under
 * `limit`; calls `crossed` for each threshold crossed.
 */
export function updateCrossed(
  bits: number, index: number, before: number, value: number, limit: number, crossed: (percent: Threshold) => void,
): number {
  for (const percent of THRESHOLDS) {
    const bit = crossingBit(index, percent)
    if (reachesThreshold(value, limit, percent)) {
      if ((bits & bit) === 0 || !reachesThreshold(before, limit, percent)) {
        bits |= bit
        crossed(percent)
      }
    } else {
      bits &= ~bit
    }
  }
  return bits
}

/** The crossed set with every bit of these daily metrics (registry indexes) cleared: a reset re-arms them. */
export function clearCrossed(bits: number, indexes: readonly number[]): number {
  for (const index of indexes) for (const percent of THRESHOLDS) bits &= ~crossingBit(index, percent)
  return bits
}

/**
 * A crossing's name in a store's outbox: "<user>|<day>|<index>|<percent>|<current>|<limit>" (index
 * 0-2 in registry order, amounts in micro-units). The same crossing reported twice before the
 * flusher copies it is one member.
 */
export function crossingRef(userId: string, day: string, index: number, percent: Threshold, current: number, limit: number): string {
  return `${userId}|${day}|${index}|${percent}|${current}|${limit}`
}

/** A crossing read back from its ref and its time; undefined when the ref is not one. */
export function crossingOf(bucket: number, ref: string, at: number): ThresholdCrossing | undefined {
  const parts = ref.split('|')
  if (parts.length !== 6) return undefined
  const [userId, day, index, percent, current, limit] = parts as [string, string, string, string, string, string]
  const metric = METRIC_NAMES[Number(index)] as MetricName | undefined
  if (metric === undefined || (percent !== '80' && percent !== '100')) return undefined
  return { bucket, ref, userId, day, metric, threshold: percent === '80' ? 80 : 100, current: Number(current), limit: Number(limit), at }
}

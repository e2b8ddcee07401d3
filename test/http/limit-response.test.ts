/**
 * rateLimitHeaders renders exactly what it rendered before it became one pass over the metrics
 * (issue 13): the reference below is the earlier implementation, compared on random answers,
 * header order included.
 */
import t from 'tap'
import { secondsToMidnight } from '../../src/clock.ts'
import { rateLimitHeaders } from '../../src/http/limit-response.ts'
import { METRIC_NAMES, METRICS } from '../../src/metrics.ts'
import type { MetricName } from '../../src/metrics.ts'
import type { ConsumeResult, ConsumedMetric } from '../../src/usage/types.ts'

type Limited = ConsumedMetric & { limit: number }

/** The implementation before issue 13, kept as the reference. */
function reference(result: ConsumeResult, now: number): Record<string, string> {
  const remainingOf = (m: Limited): number => m.remaining ?? Math.max(0, m.limit - (m.current ?? 0))
  if (result.degraded) return {}
  const entries = (Object.entries(result.metrics) as [MetricName, ConsumedMetric][])
    .filter((e): e is [MetricName, Limited] => e[1].limit !== null)
  if (entries.length === 0) return {}
  const reset = secondsToMidnight(now)
  const headline = result.deniedMetric && result.metrics[result.deniedMetric]?.limit != null
    ? entries.find(([name]) => name === result.deniedMetric)
    : entries.reduce((best, e) =>
      (remainingOf(e[1]) / Math.max(e[1].limit, 1e-6) < remainingOf(best[1]) / Math.max(best[1].limit, 1e-6) ? e : best))
  const headers: Record<string, string> = {}
  if (headline) {
    const [name, m] = headline
    headers['ratelimit-limit'] = String(Math.ceil(m.limit))
    headers['ratelimit-remaining'] = String(Math.floor(remainingOf(m)))
    if (METRICS[name].period === 'day') headers['ratelimit-reset'] = String(reset)
  }
  headers['ratelimit-policy'] = entries
    .map(([name, m]) => `"${name}";q=${Math.ceil(m.limit)}${METRICS[name].period === 'day' ? `;w=86400` : ''}`)
    .join(', ')
  headers.ratelimit = entries
    .map(([name, m]) => `"${name}";r=${Math.floor(remainingOf(m))}${METRICS[name].period === 'day' ? `;t=${reset}` : ''}`)
    .join(', ')
  return headers
}

/** A small deterministic PRNG, so a failure reproduces. */
function prng(seed: number): () => number {
  let s = seed
  return () => {
    s = (s * 1_103_515_245 + 12_345) % 2_147_483_648
    return s / 2_147_483_648
  }
}

t.test('same headers, same order, as the earlier implementation', async (t) => {
  const rnd = prng(13)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T
  const values = [0, 0.3, 1, 9.9, 10, 10.5, 1000, 2e9, 123.456789]
  let mismatches = 0
  for (let i = 0; i < 20_000; i++) {
    const metrics: Partial<Record<MetricName, ConsumedMetric>> = {}
    for (const name of METRIC_NAMES) {
      if (rnd() < 0.5) continue
      const limit = rnd() < 0.2 ? null : pick(values)
      const current = rnd() < 0.1 ? null : pick(values)
      metrics[name] = {
        current,
        limit,
        remaining: limit === null || current === null || rnd() < 0.2 ? null : Math.max(0, limit - current),
        unit: METRICS[name].unit,
        period: METRICS[name].period,
        amount: 1,
      }
    }
    const names = Object.keys(metrics) as MetricName[]
    const result: ConsumeResult = {
      allowed: rnd() < 0.5,
      reason: null,
      deniedMetric: rnd() < 0.5 && names.length > 0 ? pick(names) : null,
      tier: 'free',
      day: '2026-11-28',
      metrics,
      resetsAt: null,
      replayed: false,
      ...(rnd() < 0.05 ? { degraded: true } : {}),
    }
    const now = Date.parse('2026-11-28T00:00:00Z') + Math.floor(rnd() * 86_400_000)
    const got = JSON.stringify(Object.entries(rateLimitHeaders(result, now)))
    const want = JSON.stringify(Object.entries(reference(result, now)))
    if (got !== want && mismatches++ < 5) t.equal(got, want, JSON.stringify(result))
  }
  t.equal(mismatches, 0, 'no mismatch in 20 000 random answers')
})

/**
 * How a consume answer looks on the wire: the IETF RateLimit headers on every guarded answer, and
 * the spec's 429 body with Retry-After on a denial. Shared by the guard and the consume route.
 */
import type { FastifyReply } from 'fastify'
import { secondsToMidnight } from '../clock.ts'
import { METRICS } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import type { ConsumeResult, ConsumedMetric } from '../usage/types.ts'
import { errorBody } from './errors.ts'
import type { ErrorBody } from './errors.ts'

const DAY_SECONDS = 86_400

type Limited = ConsumedMetric & { limit: number }

function remainingOf(m: Limited): number {
  return m.remaining ?? Math.max(0, m.limit - (m.current ?? 0))
}

function limited(result: ConsumeResult): [MetricName, ConsumedMetric & { limit: number }][] {
  return (Object.entries(result.metrics) as [MetricName, ConsumedMetric][])
    .filter((e): e is [MetricName, ConsumedMetric & { limit: number }] => e[1].limit !== null)
}

/**
 * RateLimit-Limit / -Remaining / -Reset (the widely used trio, for the denied metric or else the
 * one closest to its limit) and the current draft's structured RateLimit-Policy / RateLimit
 * fields, one named policy per limited metric. Unlimited metrics get no policy. Values are
 * integers (the fields require it): remaining is rounded down, a limit up. A degraded answer
 * (given without Redis) has none.
 */
export function rateLimitHeaders(result: ConsumeResult, now: number): Record<string, string> {
  // Admitted without Redis (USAGE_FAIL_MODE=open): the usage is unknown, so no numbers are claimed.
  if (result.degraded) return {}
  const entries = limited(result)
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
    .map(([name, m]) => `"${name}";q=${Math.ceil(m.limit)}${METRICS[name].period === 'day' ? `;w=${DAY_SECONDS}` : ''}`)
    .join(', ')
  headers.ratelimit = entries
    .map(([name, m]) => `"${name}";r=${Math.floor(remainingOf(m))}${METRICS[name].period === 'day' ? `;t=${reset}` : ''}`)
    .join(', ')
  return headers
}

/** The spec's 429 body (extra fields allowed): the first denied metric in registry order. */
export function limitExceededBody(result: ConsumeResult): ErrorBody {
  const metric = result.deniedMetric ?? (Object.keys(result.metrics)[0] as MetricName)
  const m = result.metrics[metric]
  return errorBody('Usage limit exceeded', result.reason ?? `Daily ${metric} limit exceeded`, {
    current: m?.current ?? null,
    limit: m?.limit ?? null,
    tier: result.tier,
    metric,
    amount: m?.amount ?? null,
    remaining: m?.remaining ?? null,
    resets_at: METRICS[metric].period === 'day' ? result.resetsAt : null,
  })
}

/** Headers of a denial: the RateLimit fields, plus Retry-After unless a gauge denied it. */
export function limitExceededHeaders(result: ConsumeResult, now: number): Record<string, string> {
  const headers = rateLimitHeaders(result, now)
  const metric = result.deniedMetric
  if (metric && METRICS[metric].period === 'day') headers['retry-after'] = String(secondsToMidnight(now))
  return headers
}

/** A denial as rendered for one second of the clock (its Retry-After and reset fields count seconds). */
interface Rendered {
  second: number
  headers: Record<string, string>
  body: string
}

/**
 * Renderings of answers the usage service hands out repeatedly: a remembered denial is one frozen
 * object for as long as the denial is remembered, so a client hammering a denied call costs its
 * headers and JSON once per second, not once per request. Keyed weakly: gone with the answer.
 */
const rendered = new WeakMap<ConsumeResult, Rendered>()

export function sendLimitExceeded(reply: FastifyReply, result: ConsumeResult, now: number): FastifyReply {
  reply.code(429)
  if (!Object.isFrozen(result)) return reply.headers(limitExceededHeaders(result, now)).send(limitExceededBody(result))
  const second = Math.floor(now / 1000)
  let r = rendered.get(result)
  if (r?.second !== second) {
    r = { second, headers: limitExceededHeaders(result, now), body: JSON.stringify(limitExceededBody(result)) }
    rendered.set(result, r)
  }
  return reply.headers(r.headers).type('application/json; charset=utf-8').send(r.body)
}

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

interface Policy {
  /** `"<name>";q=<limit>[;w=86400]` */
  policy: string
  /** `"<name>";r=` */
  field: string
  day: boolean
}

/** Rendered policies by metric and limit: limits rarely change, and this runs on every guarded request. */
const policies = new Map<MetricName, Map<number, Policy>>()

function policyOf(name: MetricName, limit: number): Policy {
  let byLimit = policies.get(name)
  if (byLimit === undefined) policies.set(name, (byLimit = new Map()))
  let p = byLimit.get(limit)
  if (p === undefined) {
    const day = METRICS[name].period === 'day'
    p = { policy: `"${name}";q=${Math.ceil(limit)}${day ? `;w=${DAY_SECONDS}` : ''}`, field: `"${name}";r=`, day }
    // Bounded: one entry per distinct limit of the metric; after many limit changes it starts afresh.
    if (byLimit.size >= 1000) byLimit.clear()
    byLimit.set(limit, p)
  }
  return p
}

function remainingOf(m: ConsumedMetric, limit: number): number {
  return m.remaining ?? Math.max(0, limit - (m.current ?? 0))
}

/**
 * RateLimit-Limit / -Remaining / -Reset (the widely used trio, for the denied metric or else the
 * one closest to its limit) and the current draft's structured RateLimit-Policy / RateLimit
 * fields, one named policy per limited metric. Unlimited metrics get no policy. Values are
 * integers (the fields require it): remaining is rounded down, a limit up. A degraded answer
 * (given without Redis) has none. One pass over the metrics: this runs on every guarded request.
 */
export function rateLimitHeaders(result: ConsumeResult, now: number): Record<string, string> {
  // Admitted without Redis (USAGE_FAIL_MODE=open): the usage is unknown, so no numbers are claimed.
  if (result.degraded) return {}
  const denied = result.deniedMetric
  let headline: MetricName | undefined
  let headlineMetric: ConsumedMetric | undefined
  let headlineLimit = 0
  let headlineRatio = 0
  let policy = ''
  let fields = ''
  let reset = -1
  for (const key in result.metrics) {
    const name = key as MetricName
    const m = result.metrics[name] as ConsumedMetric
    const limit = m.limit
    if (limit === null) continue
    const p = policyOf(name, limit)
    const remaining = remainingOf(m, limit)
    if (p.day && reset < 0) reset = secondsToMidnight(now)
    policy = policy === '' ? p.policy : `${policy}, ${p.policy}`
    const field = p.day ? `${p.field}${Math.floor(remaining)};t=${reset}` : `${p.field}${Math.floor(remaining)}`
    fields = fields === '' ? field : `${fields}, ${field}`
    // The denied metric when it is limited, else the first with the lowest remaining share.
    const ratio = remaining / Math.max(limit, 1e-6)
    if (denied !== null && name === denied) {
      headline = name
      headlineMetric = m
      headlineLimit = limit
      headlineRatio = -Infinity
    } else if (headline === undefined || ratio < headlineRatio) {
      headline = name
      headlineMetric = m
      headlineLimit = limit
      headlineRatio = ratio
    }
  }
  if (headline === undefined || headlineMetric === undefined) return {}
  const headers: Record<string, string> = {}
  headers['ratelimit-limit'] = String(Math.ceil(headlineLimit))
  headers['ratelimit-remaining'] = String(Math.floor(remainingOf(headlineMetric, headlineLimit)))
  if (METRICS[headline].period === 'day') headers['ratelimit-reset'] = String(secondsToMidnight(now))
  headers['ratelimit-policy'] = policy
  headers.ratelimit = fields
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

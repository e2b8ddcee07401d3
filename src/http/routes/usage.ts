/**
 * The user routes under /api/usage: status, check-limit, consume, increment. A user sees and
 * spends only their own quota: the user id always comes from the token, never from the body.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'
import { toMicro } from '../../metrics.ts'
import type { MetricName } from '../../metrics.ts'
import { IdempotencyConflictError } from '../../usage/service.ts'
import type { Amounts, ConsumeResult, Decision } from '../../usage/types.ts'
import { HttpError } from '../errors.ts'
import { rateLimitHeaders, sendLimitExceeded } from '../limit-response.ts'
import {
  CheckLimitBody, CheckLimitResponse, ConsumeBody, ConsumeResponse, IncrementBody, LimitExceededResponse,
  StatusResponse, errorResponses,
} from '../schemas.ts'

const security = [{ bearerAuth: [] }]

export function decisionBody(d: Decision) {
  return {
    allowed: d.allowed,
    metric: d.metric,
    amount: d.amount,
    current: d.current,
    limit: d.limit,
    remaining: d.remaining,
    tier: d.tier,
    reason: d.reason,
    resets_at: d.resetsAt,
    ...(d.degraded ? { degraded: true } : {}),
  }
}

/**
 * The 200 body of consume/increment; the single-metric form also carries the flat fields. A replay
 * (same idempotency_key) answers this same body: only the `idempotent-replayed` header tells.
 */
export function consumeBody(result: ConsumeResult, single: MetricName | undefined) {
  const flat = single ? result.metrics[single] : undefined
  return {
    allowed: result.allowed,
    tier: result.tier,
    date: result.day,
    resets_at: result.resetsAt,
    ...(single && flat
      ? { metric: single, amount: flat.amount, current: flat.current, limit: flat.limit, remaining: flat.remaining }
      : {}),
    metrics: result.metrics,
    ...(result.degraded ? { degraded: true } : {}),
  }
}

/** Sends a spend answer: 200 with RateLimit headers, or the spec's 429. */
function answer(reply: FastifyReply, result: ConsumeResult, single: MetricName | undefined, now: number) {
  if (result.replayed) reply.header('idempotent-replayed', 'true')
  if (!result.allowed) return sendLimitExceeded(reply, result, now)
  return reply.headers(rateLimitHeaders(result, now)).send(consumeBody(result, single))
}

/**
 * The `metrics` form, each amount checked under its own name ("metrics.deployments must be a whole
 * number..."), also when only one metric is given; the service would call that one `amount`.
 */
function checkedMetrics(metrics: Amounts): Amounts {
  for (const [name, amount] of Object.entries(metrics) as [MetricName, number][]) {
    toMicro(name, amount, { field: `metrics.${name}` })
  }
  return metrics
}

function rethrowConflict(err: unknown): never {
  if (err instanceof IdempotencyConflictError) {
    throw new HttpError(422, 'Idempotency key reuse', err.message, { field: 'idempotency_key' })
  }
  throw err
}

const usageRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/status', {
    onRequest: app.requireUser,
    schema: {
      tags: ['usage'],
      summary: "Today's usage of every metric",
      security,
      response: { 200: StatusResponse, ...errorResponses(401, 503) },
    },
  }, async (request) => app.usage.status(request.user.id))

  app.post('/check-limit', {
    onRequest: app.requireUser,
    schema: {
      tags: ['usage'],
      summary: 'Would this amount be allowed now? Changes nothing',
      security,
      body: CheckLimitBody,
      response: { 200: CheckLimitResponse, ...errorResponses(400, 401, 413, 415, 503) },
    },
  }, async (request) => {
    const decision = await app.usage.checkLimit(request.user.id, request.body.metric, request.body.amount ?? 1)
    return decisionBody(decision)
  })

  app.post('/consume', {
    onRequest: app.requireUser,
    schema: {
      tags: ['usage'],
      summary: 'Atomic check-and-increment of one or several metrics (all or none)',
      security,
      body: ConsumeBody,
      response: { 200: ConsumeResponse, 429: LimitExceededResponse, ...errorResponses(400, 401, 413, 415, 422, 503) },
    },
  }, async (request, reply) => {
    const { metric, amount, metrics, idempotency_key: idempotencyKey } = request.body
    if (metrics !== undefined && (metric !== undefined || amount !== undefined)) {
      throw new HttpError(400, 'Invalid request', 'body must have either metric (and amount) or metrics, not both', { field: 'metrics' })
    }
    let amounts: Amounts
    if (metrics !== undefined) amounts = checkedMetrics(metrics)
    else if (metric !== undefined) amounts = { [metric]: amount ?? 1 }
    else throw new HttpError(400, 'Invalid request', "body must have required property 'metric' (or 'metrics')", { field: 'metric' })
    const result = await app.usage.consume(request.user.id, amounts, { idempotencyKey }).catch(rethrowConflict)
    return answer(reply, result, metrics ? undefined : metric, app.usage.clock.now())
  })

  app.post('/increment', {
    onRequest: app.requireUser,
    schema: {
      tags: ['usage'],
      summary: 'Records actual usage unconditionally (storage may be negative)',
      security,
      body: IncrementBody,
      response: { 200: ConsumeResponse, ...errorResponses(400, 401, 413, 415, 422, 503) },
    },
  }, async (request, reply) => {
    const { metric, amount, idempotency_key: idempotencyKey } = request.body
    const result = await app.usage.incrementUsage(request.user.id, metric, amount, { idempotencyKey }).catch(rethrowConflict)
    return answer(reply, result, metric, app.usage.clock.now())
  })
}

export default usageRoutes

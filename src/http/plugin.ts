/**
 * The quota Fastify plugin (README, "In your own Fastify app"), shaped like @fastify/rate-limit: options validated once at
 * registration; decorators `usage` and `requireUsageLimit`; an onRoute hook that turns a route's
 * `config.usage` into the same guard, so routes without it pay nothing and a bad value fails at
 * start-up; refunds when a guarded handler fails. Everything behind it — store, limits, flusher,
 * midnight job — is the engine (createQuotaEngine), built here unless one is passed in.
 */
import type {
  FastifyInstance, FastifyReply, FastifyRequest, onRouteHookHandler, preHandlerAsyncHookHandler,
} from 'fastify'
import fp from 'fastify-plugin'
import { createQuotaEngine } from '../engine.ts'
import type { QuotaEngine, QuotaEngineOptions } from '../engine.ts'
import { METRIC_NAMES, fromMicro, isMetricName, toMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import type { UsageService } from '../usage/service.ts'
import type { Amounts, ConsumeResult } from '../usage/types.ts'
import { HttpError } from './errors.ts'
import { rateLimitHeaders, sendLimitExceeded } from './limit-response.ts'

/**
 * Either a running engine (`engine`, closed by its owner) or the options to build one (`redis`,
 * `database`, ...; closed with the app).
 */
export type QuotaPluginOptions = (Partial<QuotaEngineOptions> & { engine: QuotaEngine } | QuotaEngineOptions) & {
  /** Who spends: the authenticated user's id. @default request.user.id */
  userId?: (request: FastifyRequest) => string | undefined
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The usage service: checkLimit, consume, incrementUsage, refund, status. */
    usage: UsageService
    /** preHandler: atomically consumes `amount` of `metric` before the handler; refunds when it fails. */
    requireUsageLimit(metric: MetricName, amount?: number): preHandlerAsyncHookHandler
    /** The engine behind `usage`: admin service, flusher, limits, store — for operations and tests. */
    quota: QuotaEngine
  }
  interface FastifyContextConfig {
    /** Amounts this route consumes per request, e.g. `{ compute_hours: 0.5 }`. */
    usage?: Amounts
  }
}

interface GuardState {
  userId: string
  amounts: Amounts
  result: ConsumeResult
  settled: boolean
}

const guards = new WeakMap<FastifyRequest, GuardState>()

/**
 * What the usage guard of this request consumed (after `requireUsageLimit` or `config.usage` let
 * it through), e.g. to tell the client `degraded: true`; undefined on an unguarded route.
 */
export function guardResult(request: FastifyRequest): ConsumeResult | undefined {
  return guards.get(request)?.result
}

function defaultUserId(request: FastifyRequest): string | undefined {
  const user = (request as { user?: { id?: unknown } }).user
  return typeof user?.id === 'string' ? user.id : undefined
}

/** Marks a usage guard with the amounts it consumes, so a route's guards can be merged into one. */
const GUARD_AMOUNTS = Symbol('quota.guardAmounts')

type Guard = preHandlerAsyncHookHandler & { [GUARD_AMOUNTS]: Amounts }

function isGuard(hook: unknown): hook is Guard {
  return typeof hook === 'function' && GUARD_AMOUNTS in hook
}

/** Sums validated amounts per metric, exactly (in micro-units). */
function sumAmounts(parts: Amounts[]): Amounts {
  const micro = new Map<MetricName, number>()
  for (const part of parts) {
    for (const [metric, amount] of Object.entries(part) as [MetricName, number][]) {
      micro.set(metric, (micro.get(metric) ?? 0) + toMicro(metric, amount))
    }
  }
  return Object.fromEntries([...micro].map(([metric, m]) => [metric, fromMicro(m)])) as Amounts
}

/** Validates a guard's amounts at start-up: an unknown metric or a bad amount stops the app. */
function validateAmounts(amounts: Amounts, where: string): Amounts {
  if (amounts === null || typeof amounts !== 'object' || Object.keys(amounts).length === 0) {
    throw new Error(`${where}: usage must be an object like { deployments: 1 }`)
  }
  for (const [metric, amount] of Object.entries(amounts)) {
    if (!isMetricName(metric)) throw new Error(`${where}: unknown metric "${metric}"; expected one of ${METRIC_NAMES.join(', ')}`)
    try {
      toMicro(metric, amount)
    } catch (err) {
      throw new Error(`${where}: ${metric}: ${(err as Error).message}`, { cause: err })
    }
  }
  return amounts
}

async function quotaPlugin(app: FastifyInstance, options: QuotaPluginOptions): Promise<void> {
  const getUserId = options.userId ?? defaultUserId
  let engine: QuotaEngine
  if ('engine' in options && options.engine) {
    engine = options.engine
  } else {
    engine = await createQuotaEngine({ logger: app.log, ...(options as QuotaEngineOptions) })
    app.addHook('onClose', () => engine.close())
  }
  const { usage, clock } = engine

  const guard = (validated: Amounts): preHandlerAsyncHookHandler => {
    // Frozen: the usage service then prepares these amounts once, not on every request.
    const amounts = Object.freeze({ ...validated })
    async function usageGuard(this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) {
      // A request is charged once: a guard added with app.addHook and one on the route do not both count.
      if (guards.has(request)) return
      const userId = getUserId(request)
      if (userId === undefined) throw new HttpError(401, 'Unauthorized', 'A user is required to spend usage')
      const result = await usage.consume(userId, amounts)
      // The request's log lines from here on, "request completed" included, say who spent and
      // how the decision went.
      request.log = reply.log = request.log.child({ userId, usage: result.allowed ? 'allowed' : 'denied' })
      const now = clock.now()
      if (!result.allowed) {
        await sendLimitExceeded(reply, result, now)
        return reply
      }
      guards.set(request, { userId, amounts, result, settled: false })
      reply.headers(rateLimitHeaders(result, now))
    }
    return Object.assign(usageGuard, { [GUARD_AMOUNTS]: amounts })
  }

  /**
   * Settles a guarded request once its status is known: refunds what it consumed when it failed.
   * Returns a promise only when there is a refund to wait for, so unguarded routes and guarded
   * requests that succeeded pass the hooks below without one.
   */
  const settleGuard = (request: FastifyRequest, reply: FastifyReply): Promise<void> | undefined => {
    const state = guards.get(request)
    if (!state || state.settled) return undefined
    state.settled = true
    if (reply.statusCode < 400 || state.result.degraded) return undefined
    return usage.refund(state.userId, state.amounts, state.result.day).catch((err: Error) => {
      request.log.error({ err: err.message }, 'usage refund failed')
    })
  }
  // onSend sees the final status (handler answers and thrown errors alike) before the client does;
  // onResponse covers answers that skipped onSend (aborted connections).
  app.addHook('onSend', (request, reply, payload, done) => {
    const refund = settleGuard(request, reply)
    if (refund) void refund.then(() => done(null, payload))
    else done(null, payload)
  })
  app.addHook('onResponse', (request, reply, done) => {
    const refund = settleGuard(request, reply)
    if (refund) void refund.then(() => done())
    else done()
  })

  app.decorate('usage', usage)
  app.decorate('quota', engine)
  app.decorate('requireUsageLimit', (metric: MetricName, amount = 1) =>
    guard(validateAmounts({ [metric]: amount }, `requireUsageLimit('${String(metric)}', ${String(amount)})`)))

  // A route's guards become ONE guard: `config.usage` and any `requireUsageLimit` in its own
  // preHandler list are summed and consumed atomically (all or none), where the first guard stood.
  // Without this only the first would count (a request is charged once, by whichever guard runs
  // first), silently under-counting `preHandler: [requireUsageLimit('a'), requireUsageLimit('b')]`.
  const onRoute: onRouteHookHandler = (routeOptions) => {
    const where = `route ${routeOptions.method} ${routeOptions.url}`
    const configured = routeOptions.config?.usage
    const existing = routeOptions.preHandler === undefined
      ? []
      : Array.isArray(routeOptions.preHandler) ? [...routeOptions.preHandler] : [routeOptions.preHandler]
    const guarded = existing.filter(isGuard)
    if (configured === undefined && guarded.length <= 1) return
    const parts = guarded.map((g) => g[GUARD_AMOUNTS])
    if (configured !== undefined) parts.push(validateAmounts(configured, `${where} config.usage`))
    const hook = guard(validateAmounts(sumAmounts(parts), where))
    const at = guarded.length > 0 ? existing.indexOf(guarded[0] as preHandlerAsyncHookHandler) : existing.length
    const rest = existing.filter((h) => !isGuard(h))
    rest.splice(at, 0, hook)
    routeOptions.preHandler = rest
  }
  app.addHook('onRoute', onRoute)
}

export default fp(quotaPlugin, { fastify: '5.x', name: 'quota' })
export { quotaPlugin }

/**
 * The quota Fastify plugin (DESIGN 1.9), shaped like @fastify/rate-limit: options validated once at
 * registration; decorators `usage` and `requireUsageLimit`; an onRoute hook that turns a route's
 * `config.usage` into the same guard, so routes without it pay nothing and a bad value fails at
 * start-up. It also runs, per process, the tier cache (LISTEN), the flusher, and — on the leader
 * only — the midnight job.
 */
import type {
  FastifyInstance, FastifyReply, FastifyRequest, onRouteHookHandler, preHandlerAsyncHookHandler,
} from 'fastify'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { systemClock } from '../clock.ts'
import type { Clock } from '../clock.ts'
import type { FailMode } from '../config.ts'
import { ServerClock } from '../counters/redis-client.ts'
import { warnAboutRedisDurability } from '../counters/redis-checks.ts'
import { RedisCounterStore } from '../counters/redis-store.ts'
import { createPool } from '../db/client.ts'
import type { Pool } from '../db/client.ts'
import { loadSeedState } from '../db/daily-usage.ts'
import { LimitsCache } from '../limits/limits-cache.ts'
import { METRIC_NAMES, fromMicro, isMetricName, toMicro } from '../metrics.ts'
import type { MetricName } from '../metrics.ts'
import { Flusher } from '../persistence/flusher.ts'
import { LeaderLock } from '../persistence/leader.ts'
import { Scheduler } from '../persistence/scheduler.ts'
import { UsageService } from '../usage/service.ts'
import type { Amounts, ConsumeResult } from '../usage/types.ts'
import { HttpError } from './errors.ts'
import { rateLimitHeaders, sendLimitExceeded } from './limit-response.ts'

export interface QuotaPluginOptions {
  /** ioredis client for decisions (use createRedisClient: bounded timeouts, no offline queue). */
  redis: Redis
  /** A pg Pool, or a connection string (a pool is then created and closed with the app). */
  database: Pool | string
  /** Connection string for the LISTEN and leader-lock connections. @default the pool's connectionString */
  databaseUrl?: string
  /** Prefix of every Redis key. @default 'quota:' */
  prefix?: string
  /** Tier of users first seen. @default 'free' */
  defaultTier?: string
  /** When Redis cannot be reached: `closed` = 503, `open` = allow and log. @default 'closed' */
  failMode?: FailMode
  /** Longest a decision waits for Redis, ms; must match the client's commandTimeout. @default 250 */
  commandTimeoutMs?: number
  /** Redis -> Postgres flush period, ms. @default 1000 */
  flushIntervalMs?: number
  /** Source of "now" for usage days. @default the system clock */
  clock?: Clock
  /** Run the flusher in this process. @default true */
  flush?: boolean
  /** Take part in the leader election that runs the midnight job. @default true */
  scheduler?: boolean
  /** Who spends: the authenticated user's id. @default request.user.id */
  userId?: (request: FastifyRequest) => string | undefined
  /** Check Redis' eviction and persistence settings at start and warn. @default true */
  checkRedisSettings?: boolean
}

export interface QuotaInternals {
  store: RedisCounterStore
  limits: LimitsCache
  flusher: Flusher
  leader: LeaderLock | undefined
  scheduler: Scheduler | undefined
  serverClock: ServerClock
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The usage service: checkLimit, consume, incrementUsage, refund, status, reset. */
    usage: UsageService
    /** preHandler: atomically consumes `amount` of `metric` before the handler; refunds when it fails. */
    requireUsageLimit(metric: MetricName, amount?: number): preHandlerAsyncHookHandler
    /** The parts behind `usage`, for operations (readiness, flush lag) and tests. */
    quota: QuotaInternals
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

/** Longest the final flush may take at shutdown (SIGTERM must end within 10 s). */
const FINAL_FLUSH_BUDGET_MS = 6000
/** Command timeout of the flusher's own Redis connection. */
const FLUSH_COMMAND_TIMEOUT_MS = 10_000

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
  const clock = options.clock ?? systemClock
  const ownsPool = typeof options.database === 'string'
  const pool = typeof options.database === 'string' ? createPool(options.database, { logger: app.log }) : options.database
  const databaseUrl = options.databaseUrl ?? (typeof options.database === 'string'
    ? options.database
    : (pool as Pool & { options: { connectionString?: string } }).options.connectionString)
  if (!databaseUrl) throw new Error('quota: pass databaseUrl (the pool has no connectionString)')
  const commandTimeoutMs = options.commandTimeoutMs ?? 250
  const getUserId = options.userId ?? defaultUserId

  const store = new RedisCounterStore(options.redis, {
    prefix: options.prefix ?? 'quota:',
    loader: (userId, day) => loadSeedState(pool, userId, day),
  })
  const limits = new LimitsCache({ pool, databaseUrl, defaultTier: options.defaultTier ?? 'free', logger: app.log })
  // The flusher reads large batches: on its own connection, with a longer timeout, it neither
  // waits behind decisions nor makes them wait (the decision client keeps its short timeout).
  const flushRedis = options.redis.duplicate({ commandTimeout: FLUSH_COMMAND_TIMEOUT_MS, connectionName: 'quota-flusher' })
  flushRedis.on('error', () => {}) // the decision client already logs connection trouble
  const flushStore = new RedisCounterStore(flushRedis, { prefix: options.prefix ?? 'quota:' })
  const flusher = new Flusher({ store: flushStore, pool, clock, intervalMs: options.flushIntervalMs ?? 1000, logger: app.log })
  const serverClock = new ServerClock(options.redis)
  const leader = options.scheduler === false ? undefined : new LeaderLock({ databaseUrl, logger: app.log })
  const scheduler = leader
    ? new Scheduler({ pool, flusher, clock, isLeader: () => leader.isLeader, logger: app.log })
    : undefined
  const usage = new UsageService({
    store, limits, clock, pool, serverClock, commandTimeoutMs,
    failMode: options.failMode ?? 'closed',
    logger: app.log,
    flushAll: () => flusher.flushAll(),
  })

  await flushRedis.connect().catch((err: Error) => app.log.warn({ err: err.message }, 'flusher redis connection failed; retrying'))
  await limits.start()
  await serverClock.sync().catch(() => {})
  serverClock.start()
  if (options.checkRedisSettings !== false) await warnAboutRedisDurability(options.redis, app.log)
  if (options.flush !== false) flusher.start()
  if (leader && scheduler) {
    await leader.start()
    scheduler.start()
  }

  app.addHook('onClose', async () => {
    await scheduler?.stop()
    await leader?.stop()
    // The last flush: everything admitted reaches daily_usage before the process exits. Bounded,
    // so a hung Postgres cannot keep the process past its shutdown budget: whatever is not
    // written stays marked dirty in Redis and the next flush (any replica, or this one restarted)
    // writes it.
    if (options.flush !== false) {
      let timer: NodeJS.Timeout | undefined
      const budget = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not done within ${FINAL_FLUSH_BUDGET_MS} ms`)), FINAL_FLUSH_BUDGET_MS)
      })
      await Promise.race([flusher.stop(), budget])
        .catch((err: Error) => app.log.error({ err: err.message }, 'final usage flush failed; changes stay in redis for the next flush'))
        .finally(() => clearTimeout(timer))
    }
    serverClock.stop()
    flushRedis.disconnect()
    await limits.stop()
    if (ownsPool) await pool.end()
  })

  const guard = (amounts: Amounts): preHandlerAsyncHookHandler => Object.assign(
    async function usageGuard(this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) {
      // A request is charged once: a guard added with app.addHook and one on the route do not both count.
      if (guards.has(request)) return
      const userId = getUserId(request)
      if (userId === undefined) throw new HttpError(401, 'Unauthorized', 'A user is required to spend usage')
      const result = await usage.consume(userId, amounts)
      const now = clock.now()
      if (!result.allowed) {
        await sendLimitExceeded(reply, result, now)
        return reply
      }
      guards.set(request, { userId, amounts, result, settled: false })
      reply.headers(rateLimitHeaders(result, now))
    },
    { [GUARD_AMOUNTS]: amounts },
  )

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
  app.decorate('quota', { store, limits, flusher, leader, scheduler, serverClock })
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

/**
 * The whole service as one Fastify instance: buildApp(config) is what server.ts listens with and
 * what tests `inject` into. It owns the connections it creates (and closes them in onClose);
 * connections passed in belong to the caller.
 */
import helmet from '@fastify/helmet'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify from 'fastify'
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { RedisClient } from './counters/redis/client.ts'
import type { LoggerOptions } from 'pino'
import { loggerOptions } from './logger.ts'
import { systemClock } from './clock.ts'
import type { Clock } from './clock.ts'
import type { Config } from './config.ts'
import { createClusterClient, createRedisClient, connectRedis } from './counters/redis/client.ts'
import { createPool } from './db/client.ts'
import type { Pool } from './db/client.ts'
import auth from './http/auth.ts'
import { registerBodyEncodingCheck } from './http/body-encoding.ts'
import { createClientErrorHandler, handleServerLevelRequests } from './http/client-errors.ts'
import { HttpError, registerErrorHandling } from './http/errors.ts'
import { requestId } from './http/request-id.ts'
import { HELMET_OPTIONS } from './http/security-headers.ts'
import healthRoutes from './http/routes/health.ts'
import openapi from './http/openapi.ts'
import { createQuotaEngine } from './engine.ts'
import type { QuotaEngineOptions } from './engine.ts'
import quotaPlugin from './http/plugin.ts'
import adminRoutes from './http/routes/admin.ts'
import metricsRoute from './http/routes/metrics.ts'
import dashboardRoutes from './http/routes/dashboard.ts'
import { createQuotaMetrics } from './http/metrics.ts'
import deployRoutes from './http/routes/deploy.ts'
import reservationRoutes from './http/routes/reservations.ts'
import usageRoutes from './http/routes/usage.ts'

/** Re-exported: the pino options used to live here. */
export { loggerOptions }

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    pool: Pool
    /** The decision client in mode redis; undefined in embedded mode (counters in the process). */
    redis: RedisClient | undefined
    clock: Clock
  }
}

export interface BuildAppOptions {
  config: Config
  /** Source of "now" for usage days. @default systemClock */
  clock?: Clock
  /**
   * `false` silences logging (tests), `true` logs at `config.logLevel`, an object is merged into
   * the pino options, a pino instance is used as is (server.ts shares its start-up logger).
   * @default true
   */
  logger?: boolean | LoggerOptions | FastifyBaseLogger
  /**
   * An existing Redis client (not closed by the app). @default a new client on config.redisUrl
   * (mode redis), or a cluster client on config.redisClusterNodes (mode cluster)
   */
  redis?: RedisClient
  /**
   * An existing pool (not ended by the app). @default a new pool on config.databaseUrl. Required
   * in embedded mode: the embedded database is opened once per process, with the data folder's
   * lock (preflight.ts's prepareEmbedded), and handed in.
   */
  pool?: Pool
  /** Overrides of the engine's options (tests: no scheduler, a shorter flush interval...). */
  quota?: Partial<Omit<QuotaEngineOptions, 'redis' | 'database'>>
  /**
   * Prometheus metrics: decisions, flushes, HTTP requests, the process (served at /metrics).
   * `false` records nothing and serves no /metrics (the benchmarks measure what metrics cost).
   * @default true
   */
  metrics?: boolean
}

function isLoggerInstance(value: unknown): value is FastifyBaseLogger {
  return typeof value === 'object' && value !== null && typeof (value as { child?: unknown }).child === 'function'
}

function loggingOptions(config: Config, logger: BuildAppOptions['logger']) {
  if (isLoggerInstance(logger)) return { loggerInstance: logger }
  if (logger === false) return { logger: false }
  return { logger: { ...loggerOptions(config), ...(typeof logger === 'object' ? logger : {}) } }
}

/**
 * Node's HTTP server limits (README, "Security"): a request's headers must
 * arrive within HTTP_HEADERS_TIMEOUT_MS and the whole request within HTTP_REQUEST_TIMEOUT_MS, else
 * 408; an idle keep-alive connection is closed after HTTP_KEEP_ALIVE_TIMEOUT_MS; a connection on
 * which nothing moves at all while a request is in progress (a client that stops reading its
 * answer) is closed after max(2 x HTTP_REQUEST_TIMEOUT_MS, 60 s).
 */
function serverLimits(http: Config['http']) {
  const requestTimeout = http.requestTimeoutMs
  const headersTimeout = Math.min(http.headersTimeoutMs, requestTimeout)
  return {
    requestTimeout,
    keepAliveTimeout: http.keepAliveTimeoutMs,
    connectionTimeout: Math.max(2 * requestTimeout, 60_000),
    http: {
      // Node's own Host check answers a bare 400; the onRequest hook in buildApp sends the envelope.
      requireHostHeader: false,
      requestTimeout,
      headersTimeout,
      // Node looks for late requests on this period (default 30 s): check often enough that the
      // 408 comes close to the limit.
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(headersTimeout / 2))),
    },
  }
}

export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const { config } = options
  const app = Fastify({
    ...serverLimits(config.http),
    // Parser errors and timeouts (400/408/413/431) get the envelope too (client-errors.ts).
    clientErrorHandler: createClientErrorHandler(config.http),
    ...loggingOptions(config, options.logger),
    // Quota requests are tiny JSON documents; anything bigger is a mistake or an attack (413).
    bodyLimit: 16384,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // Types are never coerced ("5" is not 5) and extra properties are refused, not stripped:
    // bad input must be a 400, never silently reinterpreted and counted.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // While closing, the onRequest hook below answers the envelope 503 (Fastify's would be raw).
    return503OnClosing: false,
    // A client's x-request-id only when it is a short, safe token; else a new UUID (request-id.ts).
    genReqId: requestId,
  }).withTypeProvider<TypeBoxTypeProvider>()
  handleServerLevelRequests(app.server, app.log)

  // Registered first so it runs last on close: the usage plugin's onClose (final flush) still
  // has its Redis and Postgres connections.
  const owned: { pool?: Pool; redis?: RedisClient } = {}
  app.addHook('onClose', async () => {
    await Promise.allSettled([
      owned.redis ? owned.redis.quit().catch(() => owned.redis?.disconnect()) : undefined,
      owned.pool ? owned.pool.end() : undefined,
    ])
  })

  const embedded = config.mode === 'embedded'
  let pool: Pool
  let redis: RedisClient | undefined
  try {
    if (embedded) {
      if (!options.pool) throw new Error('quota: embedded mode needs the embedded database pool (preflight.ts, prepareEmbedded)')
      pool = options.pool
    } else {
      const { databaseUrl, redisUrl, redisClusterNodes } = config
      const where = redisUrl ?? redisClusterNodes?.map((n) => `${n.host}:${n.port}`).join(',')
      if (databaseUrl === undefined || where === undefined) throw new Error(`quota: mode ${config.mode} needs its Redis and DATABASE_URL`)
      pool = options.pool ?? (owned.pool = createPool(databaseUrl, { logger: app.log }))
      const timeouts = { commandTimeoutMs: config.redisCommandTimeoutMs, logger: app.log }
      redis = options.redis ?? (owned.redis = redisClusterNodes !== undefined
        ? createClusterClient({ nodes: redisClusterNodes, ...timeouts })
        : createRedisClient({ url: where, ...timeouts }))
      if (owned.redis) await connectRedis(owned.redis, where)
    }
  } catch (err) {
    await app.close()
    throw err
  }

  app.decorate('config', config)
  app.decorate('pool', pool)
  app.decorate<RedisClient | undefined>('redis', redis)
  app.decorate('clock', options.clock ?? systemClock)

  const metrics = options.metrics === false ? undefined : createQuotaMetrics()

  // Registered after the hook above, so it runs before it on close: the final flush still has
  // its connections.
  const engine = await createQuotaEngine({
    mode: config.mode,
    redis,
    database: pool,
    databaseUrl: config.databaseUrl,
    prefix: config.redisKeyPrefix,
    buckets: config.redisBuckets,
    waitReplicas: config.redisWaitReplicas,
    defaultTier: config.defaultTier,
    failMode: config.usageFailMode,
    commandTimeoutMs: config.redisCommandTimeoutMs,
    flushIntervalMs: config.flushIntervalMs,
    idempotencyKeysPerUser: config.idempotencyKeysPerUser,
    ...(config.webhook && { webhook: config.webhook }),
    ...(config.historyRetentionMonths !== undefined && { historyRetentionMonths: config.historyRetentionMonths }),
    clock: app.clock,
    logger: app.log,
    ...(metrics ? { telemetry: metrics.telemetry } : {}),
    ...options.quota,
  }).catch(async (err: unknown) => {
    await app.close()
    throw err
  })
  app.addHook('onClose', () => engine.close())
  if (metrics) {
    metrics.bindEngine(engine)
    metrics.instrument(app)
  }

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })

  registerErrorHandling(app)
  // JSON only: Fastify's built-in text/plain parser would let `curl -d` bodies reach validation
  // as strings (a 400); the contract refuses any body that is not application/json with 415.
  app.removeContentTypeParser('text/plain')
  // ...and only UTF-8, uncompressed JSON: another charset or a Content-Encoding is a 415.
  registerBodyEncodingCheck(app)
  // A strict CSP on every API answer; the Swagger UI routes set their own (openapi.ts).
  await app.register(helmet, HELMET_OPTIONS)

  // After helmet, so the 503 carries its headers. Fastify marks the server closing just before
  // running preClose hooks; from then on every new request is refused (and gets Connection: close).
  let closing = false
  app.addHook('preClose', async () => {
    closing = true
  })
  app.addHook('onRequest', async (request) => {
    if (closing) {
      throw new HttpError(503, 'Service not available', 'The server is shutting down; retry the request',
        {}, { 'Retry-After': '1' })
    }
    // RFC 9112 3.2: an HTTP/1.1 request without Host is a 400 (Node's check is turned off above).
    if (request.raw.httpVersion === '1.1' && request.headers.host === undefined) {
      throw new HttpError(400, 'Bad request', 'HTTP/1.1 requests must carry a Host header')
    }
  })

  await app.register(auth, { config, provisionUser: (id, username) => engine.limits.provisionUser(id, username) })
  await app.register(openapi, { docs: config.docs })
  await app.register(healthRoutes, { mode: config.mode, pingCounters: () => engine.store.ping(), pool })
  if (metrics) await app.register(metricsRoute, { registry: metrics.registry })
  await app.register(dashboardRoutes)

  // ---- usage plugin and routes are registered here ----
  await app.register(quotaPlugin, { engine })
  await app.register(usageRoutes, { prefix: '/api/usage' })
  await app.register(reservationRoutes, { prefix: '/api/usage' })
  await app.register(adminRoutes, { prefix: '/api/usage/admin' })
  if (config.demoRoutes) await app.register(deployRoutes)
  // ------------------------------------------------------

  return app
}

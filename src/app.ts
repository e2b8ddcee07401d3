/**
 * The whole service as one Fastify instance: buildApp(config) is what server.ts listens with and
 * what tests `inject` into. It owns the connections it creates (and closes them in onClose);
 * connections passed in belong to the caller.
 */
import { randomUUID } from 'node:crypto'
import helmet from '@fastify/helmet'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify from 'fastify'
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { Redis } from './counters/redis/client.ts'
import type { LoggerOptions } from 'pino'
import { loggerOptions } from './logger.ts'
import { systemClock } from './clock.ts'
import type { Clock } from './clock.ts'
import type { Config } from './config.ts'
import { createRedisClient, connectRedis } from './counters/redis/client.ts'
import { createPool } from './db/client.ts'
import type { Pool } from './db/client.ts'
import auth from './http/auth.ts'
import { registerErrorHandling } from './http/errors.ts'
import healthRoutes from './http/routes/health.ts'
import openapi from './http/openapi.ts'
import { createQuotaEngine } from './engine.ts'
import type { QuotaEngineOptions } from './engine.ts'
import quotaPlugin from './http/plugin.ts'
import adminRoutes from './http/routes/admin.ts'
import deployRoutes from './http/routes/deploy.ts'
import usageRoutes from './http/routes/usage.ts'

/** Re-exported: the pino options used to live here. */
export { loggerOptions }

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    pool: Pool
    redis: Redis
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
  /** An existing Redis client (not closed by the app). @default a new client on config.redisUrl */
  redis?: Redis
  /** An existing pool (not ended by the app). @default a new pool on config.databaseUrl */
  pool?: Pool
  /** Overrides of the engine's options (tests: no scheduler, a shorter flush interval...). */
  quota?: Partial<Omit<QuotaEngineOptions, 'redis' | 'database'>>
}

function isLoggerInstance(value: unknown): value is FastifyBaseLogger {
  return typeof value === 'object' && value !== null && typeof (value as { child?: unknown }).child === 'function'
}

function loggingOptions(config: Config, logger: BuildAppOptions['logger']) {
  if (isLoggerInstance(logger)) return { loggerInstance: logger }
  if (logger === false) return { logger: false }
  return { logger: { ...loggerOptions(config), ...(typeof logger === 'object' ? logger : {}) } }
}

export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const { config } = options
  const app = Fastify({
    ...loggingOptions(config, options.logger),
    // Quota requests are tiny JSON documents; anything bigger is a mistake or an attack (413).
    bodyLimit: 16384,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // Types are never coerced ("5" is not 5) and extra properties are refused, not stripped:
    // bad input must be a 400, never silently reinterpreted and counted.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    return503OnClosing: true,
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
  }).withTypeProvider<TypeBoxTypeProvider>()

  // Registered first so it runs last on close: the usage plugin's onClose (final flush) still
  // has its Redis and Postgres connections.
  const owned: { pool?: Pool; redis?: Redis } = {}
  app.addHook('onClose', async () => {
    await Promise.allSettled([
      owned.redis ? owned.redis.quit().catch(() => owned.redis?.disconnect()) : undefined,
      owned.pool ? owned.pool.end() : undefined,
    ])
  })

  const pool = options.pool ?? (owned.pool = createPool(config.databaseUrl, { logger: app.log }))
  const redis = options.redis ?? (owned.redis = createRedisClient({
    url: config.redisUrl,
    commandTimeoutMs: config.redisCommandTimeoutMs,
    logger: app.log,
  }))
  try {
    if (owned.redis) await connectRedis(owned.redis, config.redisUrl)
  } catch (err) {
    await app.close()
    throw err
  }

  app.decorate('config', config)
  app.decorate('pool', pool)
  app.decorate('redis', redis)
  app.decorate('clock', options.clock ?? systemClock)

  // Registered after the hook above, so it runs before it on close: the final flush still has
  // its connections.
  const engine = await createQuotaEngine({
    redis,
    database: pool,
    databaseUrl: config.databaseUrl,
    prefix: config.redisKeyPrefix,
    defaultTier: config.defaultTier,
    failMode: config.usageFailMode,
    commandTimeoutMs: config.redisCommandTimeoutMs,
    flushIntervalMs: config.flushIntervalMs,
    idempotencyKeysPerUser: config.idempotencyKeysPerUser,
    clock: app.clock,
    logger: app.log,
    ...options.quota,
  }).catch(async (err: unknown) => {
    await app.close()
    throw err
  })
  app.addHook('onClose', () => engine.close())

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })

  registerErrorHandling(app)
  // JSON only: Fastify's built-in text/plain parser would let `curl -d` bodies reach validation
  // as strings (a 400); the contract refuses any body that is not application/json with 415.
  app.removeContentTypeParser('text/plain')
  // A JSON API renders nothing, so no CSP; the other headers (nosniff, frame-ancestors...) stay.
  await app.register(helmet, { global: true, contentSecurityPolicy: false })
  await app.register(auth, { config, provisionUser: (id, username) => engine.limits.provisionUser(id, username) })
  await app.register(openapi)
  await app.register(healthRoutes, { pingCounters: () => engine.store.ping(), pool })

  // ---- usage plugin and routes are registered here ----
  await app.register(quotaPlugin, { engine })
  await app.register(usageRoutes, { prefix: '/api/usage' })
  await app.register(adminRoutes, { prefix: '/api/usage/admin' })
  if (config.demoRoutes) await app.register(deployRoutes)
  // ------------------------------------------------------

  return app
}

/**
 * quota's variants, each as a user deploys the plugin (README, "In your own Fastify app"): its
 * engine starts the flusher (Redis -> Postgres every second), takes part in the leader election
 * and runs the midnight scheduler — nothing is turned off for the bench.
 *   quota           mode redis: createRedisClient + the plugin, requireUsageLimit('api_calls', 1)
 *   quota-metrics   the same with Prometheus metrics collected (decisions, HTTP requests)
 * (quota-embedded.ts has the embedded mode's.)
 * One departure from the README: a 2 s command timeout instead of 250 ms. It costs nothing per
 * decision, and on a shared 2-core machine a scheduling stall would otherwise turn into 503s.
 */
import type { FastifyInstance } from 'fastify'
import { createRedisClient, connectRedis } from '../../../src/counters/redis/client.ts'
import { createQuotaMetrics } from '../../../src/http/metrics.ts'
import quota from '../../../src/http/plugin.ts'
import { answer, userOf } from './variant.ts'
import type { BuildVariant, ServerSettings } from './variant.ts'

const COMMAND_TIMEOUT_MS = 2000

const guardedRoute = (app: FastifyInstance): void => {
  app.get('/', { preHandler: app.requireUsageLimit('api_calls', 1) }, answer)
}

async function onRedis(app: FastifyInstance, settings: ServerSettings, withMetrics: boolean): Promise<() => Promise<void>> {
  const redis = createRedisClient({ url: settings.redisUrl, commandTimeoutMs: COMMAND_TIMEOUT_MS })
  await connectRedis(redis, settings.redisUrl)
  const metrics = withMetrics ? createQuotaMetrics() : undefined
  await app.register(quota, {
    redis,
    database: settings.databaseUrl,
    prefix: settings.prefix,
    commandTimeoutMs: COMMAND_TIMEOUT_MS,
    userId: userOf,
    ...(metrics && { telemetry: metrics.telemetry }),
  })
  if (metrics) {
    metrics.bindEngine(app.quota)
    metrics.instrument(app)
  }
  guardedRoute(app)
  // The engine does not own the decision client: closed after the app (and its final flush).
  return async () => redis.disconnect()
}

export const buildQuota: BuildVariant = (app, settings) => onRedis(app, settings, false)
export const buildQuotaWithMetrics: BuildVariant = (app, settings) => onRedis(app, settings, true)

/**
 * Package exports: the Fastify plugin for use inside another app (README, "In your own Fastify app"), the whole service
 * app, and the building blocks' types.
 *
 * @example
 * import Fastify from 'fastify'
 * import quota, { createRedisClient } from 'quota'
 *
 * const app = Fastify()
 * await app.register(quota, { redis: createRedisClient({ url, commandTimeoutMs: 250 }), database: process.env.DATABASE_URL })
 * app.post('/deploy', { preHandler: app.requireUsageLimit('deployments', 1) }, handler)
 */
export { default, default as quota } from './http/plugin.ts'
export type { QuotaPluginOptions } from './http/plugin.ts'
export { createQuotaEngine } from './engine.ts'
export type { QuotaEngine, QuotaEngineOptions } from './engine.ts'
export { buildApp } from './app.ts'
export type { BuildAppOptions } from './app.ts'
export { loadConfig, ConfigError } from './config.ts'
export type { Config, FailMode } from './config.ts'
export { createRedisClient, connectRedis } from './counters/redis/client.ts'
export { systemClock, ManualClock } from './clock.ts'
export type { Clock } from './clock.ts'
export { METRICS, METRIC_NAMES, InvalidAmountError } from './metrics.ts'
export type { MetricName } from './metrics.ts'
export { UsageService } from './usage/service.ts'
export { AdminService } from './usage/admin.ts'
export type { CounterStore } from './counters/store.ts'
export { UsageUnavailableError, UnknownTierError, IdempotencyConflictError } from './usage/errors.ts'
export type { Decision, ConsumeResult, UsageStatus, ResetSummary, Amounts } from './usage/types.ts'

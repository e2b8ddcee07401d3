/**
 * The server the HTTP benchmark drives: one process, one route per variant, so every variant runs
 * on the same Fastify, Node and Redis, and rounds can be interleaved.
 *   GET /bare   no limiter
 *   GET /quota  quota's requireUsageLimit('api_calls', 1)       (x-user: a bench-tier user)
 *   GET /quota-metrics   the same with Prometheus metrics collected (decisions, HTTP requests)
 *   GET /quota-embedded  the same on the embedded mode's in-process counter store (history on
 *                        the bench's Postgres, which decisions touch only for a user's first seed)
 *   GET /frl    @fastify/rate-limit with its Redis store
 *   GET /rlf    rate-limiter-flexible RateLimiterRedis in a preHandler
 * The user id comes from the `x-user` header: the benchmark measures limiters, not JWT checks.
 * Env: PORT, REDIS_URL, DATABASE_URL, PREFIX.
 */
import rateLimit from '@fastify/rate-limit'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import { RateLimiterRedis } from 'rate-limiter-flexible'
import { createRedisClient, connectRedis } from '../../src/counters/redis/client.ts'
import { createQuotaMetrics } from '../../src/http/metrics.ts'
import quota from '../../src/http/plugin.ts'
import type { QuotaPluginOptions } from '../../src/http/plugin.ts'

const env = (name: string): string => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is required`)
  return value
}
const redisUrl = env('REDIS_URL')
const prefix = env('PREFIX')

const app = Fastify({ logger: false })
const decisions = createRedisClient({ url: redisUrl, commandTimeoutMs: 2000 })
await connectRedis(decisions, redisUrl)
const common = {
  database: env('DATABASE_URL'),
  prefix,
  commandTimeoutMs: 2000,
  scheduler: false,
  checkRedisSettings: false,
  userId: (request: { headers: Record<string, unknown> }) => request.headers['x-user'] as string | undefined,
} satisfies Partial<QuotaPluginOptions>
// Each quota variant in a context of its own: the plugin's decorators are per context.
const guarded = (path: string, options: QuotaPluginOptions, metrics?: ReturnType<typeof createQuotaMetrics>) =>
  app.register(async (context) => {
    await context.register(quota, options)
    if (metrics) {
      metrics.bindEngine(context.quota)
      metrics.instrument(context)
    }
    context.get(path, { preHandler: context.requireUsageLimit('api_calls', 1) }, async () => ({ ok: true }))
  })
await guarded('/quota', { ...common, redis: decisions })
const metrics = createQuotaMetrics()
await guarded('/quota-metrics', { ...common, redis: decisions, telemetry: metrics.telemetry }, metrics)
await guarded('/quota-embedded', { ...common, mode: 'embedded' })

// Peers, configured as their READMEs recommend for Redis, with limits that never deny.
const peerRedis = new Redis(redisUrl, { connectTimeout: 500, maxRetriesPerRequest: 1 })
await app.register(rateLimit, {
  global: false,
  redis: peerRedis,
  nameSpace: `${prefix}frl-`,
  keyGenerator: (request) => request.headers['x-user'] as string,
})
const rlf = new RateLimiterRedis({ storeClient: peerRedis, keyPrefix: `${prefix}rlf`, points: 2_000_000_000, duration: 86_400 })

app.get('/bare', async () => ({ ok: true }))
app.get('/frl', { config: { rateLimit: { max: 2_000_000_000, timeWindow: 86_400_000 } } }, async () => ({ ok: true }))
app.get('/rlf', {
  preHandler: async (request, reply) => {
    try {
      await rlf.consume(request.headers['x-user'] as string, 1)
    } catch {
      return reply.code(429).send({ error: 'Too Many Requests' })
    }
  },
}, async () => ({ ok: true }))

await app.listen({ port: Number(env('PORT')), host: '127.0.0.1' })
process.send?.('ready')
const stop = async (): Promise<void> => {
  await app.close()
  peerRedis.disconnect()
  decisions.disconnect()
  process.exit(0)
}
process.on('SIGTERM', () => void stop())
process.on('SIGINT', () => void stop())

/**
 * The peers, each configured as its README recommends for Redis:
 *   frl  @fastify/rate-limit, registered globally, with its Redis store (an ioredis client with
 *        connectTimeout 500 and maxRetriesPerRequest 1, as in its README)
 *   rlf  rate-limiter-flexible RateLimiterRedis (ioredis, enableOfflineQueue: false) in a preHandler
 * Both key on the user and count in a one-day window, limit from limitOf().
 */
import rateLimit from '@fastify/rate-limit'
import { Redis } from 'ioredis'
import { RateLimiterRedis } from 'rate-limiter-flexible'
import { WINDOW_S, answer, limitOf, userOf } from './variant.ts'
import type { BuildVariant } from './variant.ts'

export const buildFastifyRateLimit: BuildVariant = async (app, settings) => {
  const redis = new Redis(settings.redisUrl, { connectTimeout: 500, maxRetriesPerRequest: 1 })
  await app.register(rateLimit, {
    redis,
    nameSpace: `${settings.prefix}frl-`,
    max: limitOf(settings),
    timeWindow: WINDOW_S * 1000,
    keyGenerator: (request) => userOf(request) ?? request.ip,
  })
  app.get('/', answer)
  return async () => redis.disconnect()
}

export const buildRateLimiterFlexible: BuildVariant = async (app, settings) => {
  const redis = new Redis(settings.redisUrl, { enableOfflineQueue: false })
  // Without an offline queue, commands before the connection is ready fail: wait for it.
  await new Promise<void>((resolve, reject) => {
    redis.once('ready', resolve)
    redis.once('error', reject)
  })
  const limiter = new RateLimiterRedis({
    storeClient: redis, keyPrefix: `${settings.prefix}rlf`, points: limitOf(settings), duration: WINDOW_S,
  })
  app.get('/', {
    preHandler: async (request, reply) => {
      try {
        await limiter.consume(userOf(request) ?? request.ip, 1)
      } catch {
        return reply.code(429).send({ error: 'Too Many Requests' })
      }
    },
  }, answer)
  return async () => redis.disconnect()
}

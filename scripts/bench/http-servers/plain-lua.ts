/**
 * The floor of what any Redis limiter can do: one small check-and-increment script per request
 * (EVALSHA through ioredis defineCommand) on a client with autopipelining, in a preHandler. No
 * days, no metrics, no persistence: what is left is one round trip and one tiny script.
 */
import { Redis } from 'ioredis'
import type { Result } from 'ioredis'
import { WINDOW_S, answer, limitOf, userOf } from './variant.ts'
import type { BuildVariant } from './variant.ts'

/**
 * KEYS[1]  the user's counter
 * ARGV[1]  amount to spend
 * ARGV[2]  limit
 * ARGV[3]  the counter's lifetime, seconds (set when the script creates it)
 * Returns the new count, or -1 when spending would pass the limit (nothing is counted then).
 */
const SPEND = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if current + amount > tonumber(ARGV[2]) then return -1 end
local count = redis.call('INCRBY', KEYS[1], amount)
if count == amount then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return count
`

declare module 'ioredis' {
  interface RedisCommander<Context> {
    benchSpend(key: string, amount: number, limit: number, ttlS: number): Result<number, Context>
  }
}

export const buildPlainLua: BuildVariant = async (app, settings) => {
  const redis = new Redis(settings.redisUrl, { enableAutoPipelining: true })
  redis.defineCommand('benchSpend', { numberOfKeys: 1, lua: SPEND })
  const limit = limitOf(settings)
  app.get('/', {
    preHandler: async (request, reply) => {
      const count = await redis.benchSpend(`${settings.prefix}lua:${userOf(request) ?? request.ip}`, 1, limit, WINDOW_S)
      if (count < 0) return reply.code(429).send({ error: 'Too Many Requests' })
    },
  }, answer)
  return async () => redis.disconnect()
}

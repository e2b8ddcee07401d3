/**
 * Regression test (issue 11, durability): in production the service refuses to start on a Redis
 * that keeps nothing on disk, unless REDIS_ALLOW_NO_PERSISTENCE=true accepts the loss; outside
 * production it starts (the engine logs a warning instead).
 */
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { loadConfig } from '../src/config.ts'
import { checkRedis } from '../src/preflight.ts'
import { startRedisServer } from './helpers/redis-server.ts'

const secret = randomBytes(32).toString('base64url')
// DATABASE_URL only completes mode redis: checkRedis never touches Postgres.
const config = (redisUrl: string, env: Record<string, string> = {}) =>
  loadConfig({ REDIS_URL: redisUrl, DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/quota', JWT_SECRET: secret, ...env })

t.test('production refuses a Redis without persistence, naming the fix', async (t) => {
  const redis = await startRedisServer(t)
  const problem = await checkRedis(config(redis.url, { NODE_ENV: 'production' }))
  t.match(problem, /keeps nothing on disk/)
  t.match(problem, /appendonly yes/)
  t.match(problem, /REDIS_ALLOW_NO_PERSISTENCE=true/)
})

t.test('REDIS_ALLOW_NO_PERSISTENCE=true accepts it; outside production it is only a warning', async (t) => {
  const redis = await startRedisServer(t)
  t.equal(await checkRedis(config(redis.url, { NODE_ENV: 'production', REDIS_ALLOW_NO_PERSISTENCE: 'true' })), undefined)
  t.equal(await checkRedis(config(redis.url)), undefined)
})

t.test('a Redis with AOF passes in production', async (t) => {
  const redis = await startRedisServer(t, { appendonly: true })
  t.equal(await checkRedis(config(redis.url, { NODE_ENV: 'production' })), undefined)
})

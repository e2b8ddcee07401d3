/**
 * The plugin inside a plain Fastify app (no quota error handler): a guarded route answers 200,
 * then 429 at the limit, and 503 — not 500 — when Redis cannot decide (regression: the guard's
 * UsageUnavailableError surfaced as a 500 outside quota's own app).
 */
import Fastify from 'fastify'
import t from 'tap'
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import quota from '../../src/http/plugin.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { startRedisServer } from '../helpers/redis-server.ts'
import { newUserId } from '../helpers/usage.ts'

t.test('a plain Fastify app: 200, then 429 at the limit, then 503 when Redis is gone', async (t) => {
  const db = await createTestDatabase(t)
  const server = await startRedisServer(t)
  const redis = createRedisClient({ url: server.url, commandTimeoutMs: 500 })
  await connectRedis(redis, server.url)
  const user = newUserId()
  const app = Fastify()
  await app.register(quota, {
    redis, database: db.url, scheduler: false, checkRedisSettings: false, userId: (request) => String(request.headers['x-user']),
  })
  app.post('/deploy', { preHandler: app.requireUsageLimit('deployments', 1) }, async () => ({ ok: true }))
  t.teardown(async () => {
    await app.close()
    redis.disconnect()
  })
  await app.ready()
  const codes: number[] = []
  for (let i = 0; i < 11; i++) codes.push((await app.inject({ method: 'POST', url: '/deploy', headers: { 'x-user': user } })).statusCode)
  t.same(codes, [...Array(10).fill(200), 429], 'the free tier admits 10 deployments a day')
  await server.stop()
  // Another user: the first one's denial is remembered for a second without Redis.
  const down = await app.inject({ method: 'POST', url: '/deploy', headers: { 'x-user': newUserId() } })
  t.equal(down.statusCode, 503, 'Redis unavailable: 503 (USAGE_FAIL_MODE closed), not 500')
})

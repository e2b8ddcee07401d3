/**
 * DESIGN.md 1.8: /health is liveness; /ready answers 200 only when the service's OWN Redis client
 * and Postgres pool work, else 503 with the envelope naming what is down — quickly.
 */
import { createServer } from 'node:net'
import type { Socket } from 'node:net'
import t from 'tap'
import { createRedisClient } from '../../src/counters/redis-client.ts'
import { createPool } from '../../src/db/client.ts'
import { freePort } from '../helpers/net.ts'
import { buildTestApp, envelope } from './fixture.ts'

const deadUrl = async (scheme: 'redis' | 'postgres'): Promise<string> =>
  scheme === 'redis' ? `redis://127.0.0.1:${await freePort()}` : `postgres://postgres@127.0.0.1:${await freePort()}/quota`

t.test('/health: 200 ok', async (t) => {
  const { app } = await buildTestApp(t, { database: false })
  const res = await app.inject({ url: '/health' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { status: 'ok' })
})

t.test('/ready: 200 when Redis and Postgres answer', async (t) => {
  const { app } = await buildTestApp(t)
  const res = await app.inject({ url: '/ready' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { status: 'ready', checks: { redis: 'ok', postgres: 'ok' } })
})

t.test('/ready: 503 naming redis when the app\'s own Redis client is gone', async (t) => {
  const { app } = await buildTestApp(t)
  await app.redis.quit()
  const res = await app.inject({ url: '/ready' })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '1')
  t.same(envelope(res.body), {
    error: 'Service not ready', message: 'redis is down', checks: { redis: 'down', postgres: 'ok' },
  })
})

t.test('/ready: 503 naming postgres when the pool points at a dead port', async (t) => {
  const pool = createPool(await deadUrl('postgres'), { connectionTimeoutMillis: 5000 })
  t.teardown(() => pool.end())
  const { app } = await buildTestApp(t, { database: false, pool })
  const started = Date.now()
  const res = await app.inject({ url: '/ready' })
  t.equal(res.statusCode, 503)
  t.same(envelope(res.body), {
    error: 'Service not ready', message: 'postgres is down', checks: { redis: 'ok', postgres: 'down' },
  })
  t.ok(Date.now() - started < 2000, 'answers within the probe bound')
})

t.test('/ready: both down, and a Redis that accepts but never answers, are bounded', async (t) => {
  // A TCP server that accepts connections and says nothing: PING can only time out.
  const sockets = new Set<Socket>()
  const silent = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
  })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  const port = (silent.address() as { port: number }).port
  const redis = createRedisClient({ url: `redis://127.0.0.1:${port}`, commandTimeoutMs: 1500 })
  redis.connect().catch(() => {})
  const pool = createPool(await deadUrl('postgres'))
  t.teardown(async () => {
    redis.disconnect()
    for (const socket of sockets) socket.destroy()
    await new Promise<void>((resolve) => silent.close(() => resolve()))
    await pool.end()
  })
  const { app } = await buildTestApp(t, { database: false, redis, pool })
  const started = Date.now()
  const res = await app.inject({ url: '/ready' })
  const elapsed = Date.now() - started
  t.equal(res.statusCode, 503)
  t.same(envelope(res.body), {
    error: 'Service not ready', message: 'redis and postgres are down', checks: { redis: 'down', postgres: 'down' },
  })
  t.ok(elapsed < 2000, `bounded by the 1 s probe timeout (took ${elapsed} ms)`)
})

t.test('/ready: a Redis client on a closed port is down', async (t) => {
  const redis = createRedisClient({ url: await deadUrl('redis'), commandTimeoutMs: 250 })
  redis.connect().catch(() => {})
  t.teardown(() => redis.disconnect())
  const { app } = await buildTestApp(t, { redis })
  const res = await app.inject({ url: '/ready' })
  t.equal(res.statusCode, 503)
  t.equal(envelope(res.body).message, 'redis is down')
})

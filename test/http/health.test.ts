/**
 * DESIGN.md 1.8: /health is liveness; /ready answers 200 only when the service's OWN Redis client
 * and Postgres pool work, else 503 with the envelope naming what is down — within its bound.
 *
 * The app starts healthy (the quota plugin loads tier limits at start), talking to Redis and
 * Postgres through TCP proxies; the tests then cut (port closed, connections reset) or freeze
 * (connections open, nothing answers) a proxy, without touching the shared servers.
 */
import { connect, createServer } from 'node:net'
import type { Socket } from 'node:net'
import t from 'tap'
import { createTestDatabase, databaseUrl } from '../helpers/database.ts'
import { buildTestApp } from '../helpers/app.ts'
import type { Teardownable } from '../helpers/database.ts'
import { TEST_REDIS_URL } from '../helpers/redis.ts'
import { envelope } from './envelope.ts'

interface Proxy {
  port: number
  /** Closes the port and resets every connection: the server is gone. */
  cut(): Promise<void>
  /** Keeps connections open but forwards nothing: the server hangs. */
  freeze(): void
}

async function tcpProxy(t: Teardownable, target: string): Promise<Proxy> {
  const { hostname, port } = new URL(target)
  const sockets = new Set<Socket>()
  let frozen = false
  const server = createServer((client) => {
    const upstream = connect(Number(port), hostname)
    for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
      sockets.add(from)
      from.on('data', (chunk) => {
        if (!frozen) to.write(chunk)
      })
      from.on('error', () => to.destroy())
      from.on('close', () => {
        sockets.delete(from)
        to.destroy()
      })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const cut = async (): Promise<void> => {
    if (!server.listening) return
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    for (const socket of sockets) socket.destroy()
    await closed
  }
  t.teardown(cut)
  return { port: (server.address() as { port: number }).port, cut, freeze: () => void (frozen = true) }
}

async function proxiedApp(t: Teardownable) {
  const db = await createTestDatabase(t)
  const pg = await tcpProxy(t, db.url)
  const redis = await tcpProxy(t, TEST_REDIS_URL)
  const proxiedDb = new URL(databaseUrl(db.name))
  proxiedDb.port = String(pg.port)
  const { app } = await buildTestApp(t, {
    db,
    env: { DATABASE_URL: proxiedDb.toString(), REDIS_URL: `redis://127.0.0.1:${redis.port}` },
  })
  // Teardowns run last-in first-out: this one runs before the app's close, so the final flush
  // meets closed ports and fails fast instead of waiting forever on a frozen connection.
  t.teardown(async () => {
    await Promise.all([pg.cut(), redis.cut()].map((p) => p.catch(() => {})))
  })
  return { app, pg, redis }
}

t.test('/health: 200 ok', async (t) => {
  const { app } = await buildTestApp(t)
  const res = await app.inject({ url: '/health' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { status: 'ok' })
})

t.test('/ready: 200 when Redis and Postgres answer', async (t) => {
  const { app } = await proxiedApp(t)
  const res = await app.inject({ url: '/ready' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { status: 'ready', mode: 'redis', checks: { redis: 'ok', postgres: 'ok' } })
})

t.test('/ready: 503 naming redis when Redis is gone', async (t) => {
  const { app, redis } = await proxiedApp(t)
  await redis.cut()
  const res = await app.inject({ url: '/ready' })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '1')
  t.same(envelope(res.body), {
    error: 'Service not ready', message: 'redis is down', checks: { redis: 'down', postgres: 'ok' },
  })
})

t.test("/ready: 503 naming redis when the app's own client quit, though Redis itself is up", async (t) => {
  const { app } = await buildTestApp(t)
  await app.redis?.quit()
  const res = await app.inject({ url: '/ready' })
  t.equal(res.statusCode, 503)
  t.equal(envelope(res.body).message, 'redis is down')
})

t.test('/ready: 503 naming postgres when Postgres is gone', async (t) => {
  const { app, pg } = await proxiedApp(t)
  await pg.cut()
  const res = await app.inject({ url: '/ready' })
  t.equal(res.statusCode, 503)
  t.same(envelope(res.body), {
    error: 'Service not ready', message: 'postgres is down', checks: { redis: 'ok', postgres: 'down' },
  })
})

t.test('/ready: both hanging is reported within the 1 s probe bound', async (t) => {
  const { app, pg, redis } = await proxiedApp(t)
  pg.freeze()
  redis.freeze()
  const started = Date.now()
  const res = await app.inject({ url: '/ready' })
  const elapsed = Date.now() - started
  t.equal(res.statusCode, 503)
  t.same(envelope(res.body), {
    error: 'Service not ready', message: 'redis and postgres are down', checks: { redis: 'down', postgres: 'down' },
  })
  t.ok(elapsed < 2000, `answered in ${elapsed} ms`)
})

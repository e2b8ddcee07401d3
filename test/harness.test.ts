/**
 * The test helpers themselves: fault tests are only as good as their ability to really stop,
 * pause and restart servers, to clean up after themselves, and to mint tokens the service's JWT
 * library accepts (or, for the negative ones, refuses).
 */
import jwt from '@fastify/jwt'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import pg from 'pg'
import t from 'tap'
import { startPostgresServer } from './helpers/postgres-server.ts'
import { closeRedis, createTestRedis, testRedisPrefix } from './helpers/redis.ts'
import { startRedisServer } from './helpers/redis-server.ts'
import { durationSeconds, signToken, unsignedToken } from './helpers/tokens.ts'

t.test('testRedisPrefix is unique and hash-tag safe', async (t) => {
  const a = testRedisPrefix()
  t.match(a, /^qt:harness:\d+:[0-9a-f]{8}:$/, 'names the test file (harness.test.ts), the process and a random part')
  t.not(a, testRedisPrefix())
})

t.test('createTestRedis cleans only its own prefix', async (t) => {
  const outsider = createTestRedis(t)
  const outsiderKey = `${outsider.prefix}keep`
  await outsider.set(outsiderKey, '1')
  let innerPrefix = ''
  await t.test('a test that writes keys', async (t) => {
    const redis = createTestRedis(t)
    innerPrefix = redis.prefix
    await redis.set(`${redis.prefix}a`, '1')
    await redis.hset(`${redis.prefix}{u1}:day`, 'd', '5')
    t.equal(await redis.exists(`${redis.prefix}a`, `${redis.prefix}{u1}:day`), 2)
  })
  // The subtest's teardown has run: its keys are gone, the outsider's key is not.
  t.equal(await outsider.exists(`${innerPrefix}a`, `${innerPrefix}{u1}:day`), 0, 'own keys deleted at teardown')
  t.equal(await outsider.get(outsiderKey), '1')
  t.equal(await outsider.cleanup(), 1, 'cleanup() deletes the own key')
})

t.test('startRedisServer: stop, pause, restart, persistence', async (t) => {
  await t.test('without AOF a restart loses data, on the same port', async (t) => {
    const server = await startRedisServer(t)
    const redis = new Redis(server.url, { maxRetriesPerRequest: 1, retryStrategy: () => 50 })
    redis.on('error', () => {})
    t.teardown(() => closeRedis(redis))
    await redis.set('k', 'v')
    const firstPid = server.pid
    await server.restart()
    t.not(server.pid, firstPid, 'a new process')
    t.equal(await redis.get('k'), null, 'data gone (no persistence)')
  })

  await t.test('with AOF (fsync always) a SIGKILL loses nothing', async (t) => {
    const server = await startRedisServer(t, { appendonly: true, appendfsync: 'always' })
    const redis = new Redis(server.url, { maxRetriesPerRequest: 1, retryStrategy: () => 50 })
    redis.on('error', () => {})
    t.teardown(() => closeRedis(redis))
    await redis.set('k', 'v')
    await server.kill('SIGKILL')
    t.equal(server.pid, undefined, 'not running')
    await server.start()
    t.equal(await redis.get('k'), 'v', 'data replayed from the AOF')
  })

  await t.test('pause makes commands hang; resume answers them', async (t) => {
    const server = await startRedisServer(t)
    const redis = new Redis(server.url, { commandTimeout: 200, maxRetriesPerRequest: 0 })
    redis.on('error', () => {})
    t.teardown(() => closeRedis(redis))
    t.equal(await redis.ping(), 'PONG')
    server.pause()
    await t.rejects(redis.ping(), /timed out/i, 'a paused Redis does not answer')
    server.resume()
    t.equal(await redis.ping(), 'PONG')
  })
})

t.test('startPostgresServer: a throwaway cluster that can go down and come back', async (t) => {
  const server = await startPostgresServer(t)
  const query = async (sql: string): Promise<unknown[]> => {
    const c = new pg.Client({ connectionString: server.url(), connectionTimeoutMillis: 2000 })
    c.on('error', () => {})
    await c.connect()
    try {
      return (await c.query(sql)).rows
    } finally {
      await c.end()
    }
  }
  t.same(await query('SELECT 1 AS one'), [{ one: 1 }])
  await query('CREATE DATABASE other')
  await server.stop()
  await t.rejects(query('SELECT 1'), 'down after stop')
  await server.start()
  t.same(await query(`SELECT datname FROM pg_database WHERE datname = 'other'`), [{ datname: 'other' }], 'data kept')
  t.equal(server.url('x'), `postgres://postgres@127.0.0.1:${server.port}/x`)
})

t.test('tokens: accepted and refused by @fastify/jwt', async (t) => {
  const secret = 'x'.repeat(32)
  const app = Fastify()
  await app.register(jwt, { secret })
  app.get('/me', async (req) => req.jwtVerify())
  t.teardown(() => app.close())
  const call = async (token: string): Promise<{ status: number; body: Record<string, unknown> }> => {
    const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
    return { status: res.statusCode, body: res.json() }
  }
  const sub = '8e7d4a7e-6c0b-4c1e-9a8e-3f1f0c2b5d11'

  const ok = await call(signToken({ sub, secret, role: 'admin', roles: ['x', 'admin'], username: 'ann' }))
  t.equal(ok.status, 200)
  t.match(ok.body, { sub, role: 'admin', roles: ['x', 'admin'], username: 'ann' })
  const exp = ok.body.exp as number
  const iat = ok.body.iat as number
  t.equal(exp - iat, 3600, 'default lifetime 1h')

  t.equal((await call(signToken({ sub, secret, expiresIn: '-1h' }))).status, 401, 'expired')
  t.equal((await call(signToken({ sub, secret: 'y'.repeat(32) }))).status, 401, 'wrong key')
  t.equal((await call(unsignedToken({ sub }))).status, 401, 'alg none')
  t.equal(durationSeconds('15m'), 900)
  t.equal(durationSeconds('2d'), 172_800)
  t.equal(durationSeconds(-5), -5)
  const noExp = JSON.parse(Buffer.from(signToken({ sub, secret, claims: { exp: undefined } }).split('.')[1] ?? '', 'base64url').toString())
  t.notOk('exp' in noExp, 'claims can remove exp')
})

t.test('startService: waits for /ready, passes env, signals, reports output', async (t) => {
  // A stand-in for src/server.ts with the same outward contract: PORT/HOST from env, /ready,
  // SIGTERM -> exit 0. It becomes ready only after a delay, to prove the helper waits.
  const dir = t.testdir({
    'server.mjs': `
      import { createServer } from 'node:http'
      const started = Date.now()
      const server = createServer((req, res) => {
        if (req.url === '/ready') {
          res.statusCode = Date.now() - started > 300 ? 200 : 503
          return res.end()
        }
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ secret: process.env.JWT_SECRET, level: process.env.LOG_LEVEL,
          nodeOptions: process.env.NODE_OPTIONS ?? null, extra: process.env.EXTRA }))
      })
      server.listen(Number(process.env.PORT), process.env.HOST)
      console.error('stand-in started')
      process.on('SIGTERM', () => server.close(() => process.exit(0)))
    `,
    'crash.mjs': `console.error('boom: DATABASE_URL is wrong'); process.exit(3)`,
  })
  const { startService } = await import('./helpers/service-process.ts')

  const svc = await startService(t, { EXTRA: 'x' }, { entry: `${dir}/server.mjs` })
  const info = (await (await fetch(`${svc.baseUrl}/info`)).json()) as Record<string, unknown>
  t.same(info, { secret: svc.env.JWT_SECRET, level: 'warn', nodeOptions: null, extra: 'x' }, 'env: defaults, extra, no tap NODE_OPTIONS')
  t.equal(Buffer.byteLength(svc.env.JWT_SECRET ?? ''), 43, 'a random 32-byte secret (base64url)')
  svc.signal('SIGTERM')
  t.same(await svc.waitForExit(5000), { code: 0, signal: null })
  t.match(svc.output(), /stand-in started/)

  await t.rejects(
    startService(t, {}, { entry: `${dir}/crash.mjs`, readyTimeoutMs: 5000 }),
    /exited \(code 3[\s\S]*boom: DATABASE_URL is wrong/,
    'a service that dies at start fails fast, with its output',
  )
})

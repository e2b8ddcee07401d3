/**
 * Issue 11, finding 7: a client's X-Request-Id is used (as the response header and the log's
 * reqId) only when it is 1-128 characters of [A-Za-z0-9._:-]; anything else is replaced by a
 * new UUID.
 */
import { Writable } from 'node:stream'
import t from 'tap'
import { pino } from 'pino'
import { buildApp } from '../../src/app.ts'
import { loadConfig } from '../../src/config.ts'
import { REQUEST_ID, requestId } from '../../src/http/request-id.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { TEST_REDIS_URL, closeRedis, deleteKeysWithPrefix, testRedisPrefix } from '../helpers/redis.ts'
import { Redis } from 'ioredis'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

// The app with a real logger writing to memory, to see the reqId the log lines carry.
const lines: Array<{ reqId?: string; url?: string; req?: { url?: string } }> = []
const sink = new Writable({
  write(chunk: Buffer, _encoding, done) {
    for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line))
    done()
  },
})
const db = await createTestDatabase(t)
const prefix = testRedisPrefix()
const config = loadConfig({ DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: prefix, JWT_SECRET: 'r'.repeat(32) })
const app = await buildApp({ config, logger: pino({ level: 'info' }, sink), quota: { scheduler: false, checkRedisSettings: false } })
t.teardown(async () => {
  await app.close()
  const cleaner = new Redis(TEST_REDIS_URL)
  await deleteKeysWithPrefix(cleaner, prefix).catch(() => {})
  await closeRedis(cleaner)
})
app.get('/test/request-id', async (request) => ({ id: request.id }))
await app.ready()

/** The reqId of the log lines of the request to `url` ("incoming request", "request completed"). */
function loggedIds(url: string): string[] {
  return [...new Set(lines.filter((l) => l.req?.url === url || l.url === url).map((l) => String(l.reqId)))]
}

t.test('request id: a safe X-Request-Id is kept, echoed and logged', async (t) => {
  for (const [i, id] of ['trace-123', 'a', '1-5759e988-bd862e3fe1be46a994272793', 'span.01_ab:cd', 'x'.repeat(128)].entries()) {
    const url = `/test/request-id?safe=${i}`
    const res = await app.inject({ url, headers: { 'x-request-id': id } })
    t.equal(res.headers['x-request-id'], id)
    t.same(res.json(), { id })
    t.same(loggedIds(url), [id], 'the log uses it')
  }
})

t.test('request id: an unsafe or oversized X-Request-Id is replaced by a new UUID', async (t) => {
  const unsafe = [
    'x'.repeat(129),
    'x'.repeat(8192),
    'two words',
    'a,b',
    '<script>alert(1)</script>',
    '{"level":60}',
    'id\tx',
    '%0d%0aSet-Cookie',
    'ünïcode',
    '',
  ]
  const seen = new Set<string>()
  for (const [i, id] of unsafe.entries()) {
    const url = `/test/request-id?unsafe=${i}`
    const res = await app.inject({ url, headers: { 'x-request-id': id } })
    const used = res.headers['x-request-id'] as string
    t.match(used, UUID, JSON.stringify(id.slice(0, 30)))
    t.same(res.json(), { id: used })
    t.same(loggedIds(url), [used], 'the log uses the same new id')
    seen.add(used)
  }
  t.notOk(lines.some((l) => JSON.stringify(l).includes('<script>') || JSON.stringify(l).includes('x'.repeat(129))),
    'no log line carries the refused ids')
  t.equal(seen.size, unsafe.length, 'each a new one')
  // Error answers too (the 404 handler).
  const notFound = await app.inject({ url: '/nope', headers: { 'x-request-id': 'x'.repeat(8192) } })
  t.equal(notFound.statusCode, 404)
  t.match(notFound.headers['x-request-id'], UUID)
})

t.test('request id: the pattern and the function', async (t) => {
  t.equal(REQUEST_ID.source, '^[A-Za-z0-9._:-]{1,128}$', 'the documented format')
  t.equal(requestId({ headers: { 'x-request-id': 'ok-1' } }), 'ok-1')
  t.match(requestId({ headers: {} }), UUID)
  t.match(requestId({ headers: { 'x-request-id': ['a', 'b'] as unknown as string } }), UUID)
})

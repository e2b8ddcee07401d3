/**
 * Issue 11, finding 6 (second part): a request that arrives while the server is closing gets the
 * DESIGN 1.8 envelope as a 503 with Retry-After and the security headers, not Fastify's raw
 * `{"error","message","statusCode"}` 503.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { waitUntil } from '../helpers/net.ts'
import { envelope } from './envelope.ts'
import { listen, request } from './raw-http.ts'

t.test('closing: a request arriving during close() is an envelope 503 with Retry-After', async (t) => {
  const h = await buildTestApp(t)
  const port = await listen(h.app)
  let closed: Promise<void> | undefined
  const res = await request(port, 'GET /api/usage/status HTTP/1.1\r\nHost: quota\r\n', {
    timeoutMs: 10_000,
    // The request has begun (so the connection is not idle and survives close()), then the server
    // starts closing, then the request completes.
    afterConnect: async (socket) => {
      await sleep(100)
      closed = h.app.close()
      await waitUntil(async () => !h.app.server.listening, { timeoutMs: 5000, what: 'server stops listening' })
      socket.write('\r\n')
    },
  })
  await closed
  t.equal(res.statusCode, 503)
  t.same(envelope(res.body), { error: 'Service not available', message: 'The server is shutting down; retry the request' })
  t.equal(res.headers['retry-after'], '1')
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8')
  t.equal(res.headers['x-content-type-options'], 'nosniff')
  t.match(res.headers['content-security-policy'], /default-src 'none'/)
  t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/)
  t.match(res.headers.connection, /close/i)
})

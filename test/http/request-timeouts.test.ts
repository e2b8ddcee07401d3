/**
 * Issue 11, finding 5: a request must arrive within bounded time. A client that announces a body
 * and sends one byte, or never finishes its headers, gets a 408 with the envelope and loses the
 * connection; an idle keep-alive connection is closed. Over a real socket: `inject` does not go
 * through Node's HTTP server, where these limits live.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { Test } from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { envelope } from './envelope.ts'
import { exchange, listen, parseResponse, request } from './raw-http.ts'
import type { RawResponse } from './raw-http.ts'

const h = await buildTestApp(t, {
  env: { HTTP_REQUEST_TIMEOUT_MS: '1000', HTTP_HEADERS_TIMEOUT_MS: '1000', HTTP_KEEP_ALIVE_TIMEOUT_MS: '1000' },
})
const port = await listen(h.app)
const user = h.user()

function check408(t: Test, res: RawResponse): void {
  t.equal(res.statusCode, 408)
  const detail = envelope(res.body)
  t.equal(detail.error, 'Request timeout')
  t.match(detail.message, /within 1000 ms/)
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8')
  t.equal(res.headers['x-content-type-options'], 'nosniff')
  t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/)
  t.equal(res.headers.connection, 'close')
  t.ok(res.closed, 'the connection is closed')
  // 1000 ms limit, checked every 500 ms; generous for a loaded CI machine.
  t.ok(res.elapsedMs < 4000, `answered in ${res.elapsedMs} ms`)
}

const stalledConsume = (auth: string): string =>
  `POST /api/usage/consume HTTP/1.1\r\nHost: quota\r\n${auth}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`

t.test('request timeout: a body announced as 1000 bytes that stops after one byte is a 408', async (t) => {
  const res = await request(port, stalledConsume(`Authorization: Bearer ${user.token}\r\n`), { timeoutMs: 6000 })
  check408(t, res)
  const status = await h.app.inject({ url: '/api/usage/status', headers: user.headers })
  t.equal(status.json().metrics.api_calls.current, 0, 'nothing was counted')
})

t.test('request timeout: without a token the 401 comes first, then the 408 closes the connection', async (t) => {
  // The route authenticates before it reads the body (401 at once); the unread body still times out.
  const res = await exchange(port, stalledConsume(''), { timeoutMs: 6000 })
  const at = res.raw.indexOf('HTTP/1.1 408 ')
  t.match(res.raw, /^HTTP\/1\.1 401 /)
  t.ok(at > 0, 'a 408 follows')
  check408(t, { ...res, ...parseResponse(res.raw.slice(at)) })
})

t.test('request timeout: headers that never end are a 408', async (t) => {
  const res = await request(port, 'GET /health HTTP/1.1\r\nHost: quota\r\nX-Slow: 1\r\n', { timeoutMs: 6000 })
  check408(t, res)
})

t.test('request timeout: a slow but timely request is answered normally', async (t) => {
  const body = JSON.stringify({ metric: 'api_calls', amount: 1 })
  const res = await request(port,
    `POST /api/usage/check-limit HTTP/1.1\r\nHost: quota\r\nAuthorization: Bearer ${user.token}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
    { timeoutMs: 6000, afterConnect: async (socket) => {
      await sleep(300)
      socket.write(body)
    } })
  t.equal(res.statusCode, 200)
  t.match(JSON.parse(res.body), { allowed: true, metric: 'api_calls' })
})

t.test('keep-alive timeout: an idle connection is closed after HTTP_KEEP_ALIVE_TIMEOUT_MS', async (t) => {
  const res = await exchange(port, 'GET /health HTTP/1.1\r\nHost: quota\r\n\r\n', { timeoutMs: 6000 })
  t.match(res.raw, /^HTTP\/1\.1 200 /)
  t.ok(res.closed, 'closed by the server')
  t.ok(res.elapsedMs >= 900 && res.elapsedMs < 4000, `closed after ${res.elapsedMs} ms`)
})

t.test('request timeout: the limits come from configuration, with bounded defaults', async (t) => {
  t.equal(h.app.server.requestTimeout, 1000)
  t.equal(h.app.server.headersTimeout, 1000)
  t.equal(h.app.server.keepAliveTimeout, 1000)
  const defaults = await buildTestApp(t, { db: h.db })
  t.same(defaults.config.http, { requestTimeoutMs: 10_000, headersTimeoutMs: 5000, keepAliveTimeoutMs: 72_000 })
  t.equal(defaults.app.server.requestTimeout, 10_000)
  t.equal(defaults.app.server.headersTimeout, 5000)
  t.equal(defaults.app.server.keepAliveTimeout, 72_000)
  t.ok(defaults.app.server.timeout > 10_000, 'a silent connection is not kept forever either')
})

/**
 * Issue 11, finding 6: requests Node's HTTP parser refuses (headers too large, Content-Length
 * with Transfer-Encoding, a duplicate Content-Length, an unknown method) are answered with the
 * DESIGN 1.8 envelope, helmet's security headers and a request id — like every other error — and
 * the connection is closed. Over a real socket: `inject` does not go through the parser.
 */
import t from 'tap'
import type { Test } from 'tap'
import { RAW_SECURITY_HEADERS } from '../../src/http/security-headers.ts'
import { buildTestApp } from '../helpers/app.ts'
import { envelope } from './envelope.ts'
import { listen, request } from './raw-http.ts'
import type { RawResponse } from './raw-http.ts'

const h = await buildTestApp(t)
const port = await listen(h.app)

function checkAnswer(t: Test, res: RawResponse, status: number, title: string, message: RegExp): void {
  t.equal(res.statusCode, status)
  t.same(Object.keys(envelope(res.body)), ['error', 'message'], 'the envelope, not Fastify\'s {"error","message","statusCode"}')
  t.match(envelope(res.body), { error: title, message })
  t.equal(Number(res.headers['content-length']), Buffer.byteLength(res.body), 'content-length is the body')
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8')
  for (const [name, value] of Object.entries(RAW_SECURITY_HEADERS)) t.equal(res.headers[name], value, name)
  t.match(res.headers['x-request-id'], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  t.equal(res.headers.connection, 'close')
  t.ok(res.closed, 'the connection is closed')
}

t.test('parser errors: headers too large is a 431 envelope', async (t) => {
  const res = await request(port, `GET /health HTTP/1.1\r\nHost: quota\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`)
  checkAnswer(t, res, 431, 'Request header fields too large', /^Request headers exceed \d+ bytes$/)
})

t.test('parser errors: Content-Length with Transfer-Encoding is a 400 envelope', async (t) => {
  const res = await request(port, 'POST /api/usage/consume HTTP/1.1\r\nHost: quota\r\nContent-Type: application/json\r\n' +
    'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n')
  checkAnswer(t, res, 400, 'Bad request', /^Malformed HTTP request: .*(Content-Length|Transfer-Encoding)/i)
})

t.test('parser errors: a duplicate Content-Length is a 400 envelope', async (t) => {
  const res = await request(port, 'POST /api/usage/consume HTTP/1.1\r\nHost: quota\r\nContent-Type: application/json\r\n' +
    'Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}')
  checkAnswer(t, res, 400, 'Bad request', /^Malformed HTTP request: .*Content-Length/i)
})

t.test('parser errors: an unknown method is a 400 envelope', async (t) => {
  const res = await request(port, 'FROBNICATE /health HTTP/1.1\r\nHost: quota\r\n\r\n')
  checkAnswer(t, res, 400, 'Bad request', /^Malformed HTTP request/)
})

t.test('parser errors: CONNECT, which Node drops unanswered, is a 405 envelope', async (t) => {
  const res = await request(port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n')
  checkAnswer(t, res, 405, 'Method not allowed', /^CONNECT is not supported/)
})

t.test('parser errors: an Expect other than 100-continue is a 417 envelope, not Node\'s empty 417', async (t) => {
  const res = await request(port, 'GET /health HTTP/1.1\r\nHost: quota\r\nExpect: teapot\r\n\r\n')
  checkAnswer(t, res, 417, 'Expectation failed', /^Expect: teapot is not supported/)
})

t.test('parser errors: an HTTP/1.1 request without Host is a 400 envelope, not Node\'s empty 400', async (t) => {
  const res = await request(port, 'GET /health HTTP/1.1\r\nConnection: close\r\n\r\n')
  t.equal(res.statusCode, 400)
  t.same(envelope(res.body), { error: 'Bad request', message: 'HTTP/1.1 requests must carry a Host header' })
  t.equal(res.headers['x-content-type-options'], 'nosniff')
  t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/)
  const http10 = await request(port, 'GET /health HTTP/1.0\r\n\r\n')
  t.equal(http10.statusCode, 200, 'HTTP/1.0 has no Host requirement')
})

t.test('parser errors: the hand-written security headers are the ones helmet adds', async (t) => {
  const res = await h.app.inject({ url: '/nope' })
  const perResponse = new Set(['content-type', 'content-length', 'date', 'connection', 'keep-alive', 'x-request-id'])
  const helmet = Object.fromEntries(Object.entries(res.headers).filter(([name]) => !perResponse.has(name)))
  t.same(helmet, RAW_SECURITY_HEADERS)
})

t.test('parser errors: a well-formed request on the same server is unaffected', async (t) => {
  const res = await request(port, 'GET /health HTTP/1.1\r\nHost: quota\r\nConnection: close\r\n\r\n')
  t.equal(res.statusCode, 200)
})

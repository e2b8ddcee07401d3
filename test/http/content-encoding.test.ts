/**
 * Issue 11, finding 10 (part): a JSON body in another charset than UTF-8, or with a
 * Content-Encoding the service does not decode, was parsed as UTF-8. It is refused with 415,
 * before the body is parsed, so before anything is counted.
 */
import { gzipSync } from 'node:zlib'
import t from 'tap'
import { parseContentType } from '../../src/http/body-encoding.ts'
import { buildTestApp } from '../helpers/app.ts'
import { envelope } from './envelope.ts'

const h = await buildTestApp(t)
const user = h.user()
const body = JSON.stringify({ metric: 'api_calls', amount: 1 })

async function consume(headers: Record<string, string>, payload: string | Buffer = body) {
  return h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: { ...user.headers, ...headers }, payload })
}

async function apiCalls(): Promise<number> {
  const res = await h.app.inject({ url: '/api/usage/status', headers: user.headers })
  return res.json().metrics.api_calls.current as number
}

t.test('content-type charset: anything but UTF-8 is a 415 naming the charset, and nothing is counted', async (t) => {
  const cases: Array<[string, string | Buffer, string]> = [
    ['application/json; charset=utf-16', Buffer.from(body, 'utf16le'), 'utf-16'],
    ['application/json; charset=UTF-16LE', Buffer.from(body, 'utf16le'), 'utf-16le'],
    ['application/json; charset=iso-8859-1', Buffer.from(body, 'latin1'), 'iso-8859-1'],
    ['application/json;charset="windows-1252"', body, 'windows-1252'],
    ['application/json; charset=utf-7', body, 'utf-7'],
  ]
  for (const [contentType, payload, charset] of cases) {
    const res = await consume({ 'content-type': contentType }, payload)
    t.equal(res.statusCode, 415, contentType)
    const detail = envelope(res.body)
    t.equal(detail.error, 'Unsupported media type')
    t.equal(detail.message, `Content-Type charset ${charset} is not supported; send application/json encoded as UTF-8`)
    t.equal(detail.charset, charset)
  }
  t.equal(await apiCalls(), 0, 'nothing counted')
})

t.test('content-type charset: UTF-8 in any spelling, or none, is accepted', async (t) => {
  const before = await apiCalls()
  const accepted = ['application/json', 'application/json; charset=utf-8', 'application/json; charset=UTF-8',
    'application/json;charset="utf-8"', 'application/json; Charset = "UTF-8" ', 'application/json; charset=utf8']
  for (const contentType of accepted) {
    const res = await consume({ 'content-type': contentType })
    t.equal(res.statusCode, 200, contentType)
  }
  t.equal(await apiCalls(), before + accepted.length)
})

t.test('content-encoding: anything but identity is a 415 with Accept-Encoding: identity, and nothing is counted', async (t) => {
  const before = await apiCalls()
  const cases: Array<[string, string | Buffer]> = [
    ['gzip', gzipSync(body)],
    ['GZIP', gzipSync(body)],
    ['br', body],
    ['deflate', body],
    ['identity, gzip', gzipSync(body)],
    ['x-custom', body],
  ]
  for (const [encoding, payload] of cases) {
    const res = await consume({ 'content-type': 'application/json', 'content-encoding': encoding }, payload)
    t.equal(res.statusCode, 415, encoding)
    t.equal(res.headers['accept-encoding'], 'identity')
    const detail = envelope(res.body)
    t.equal(detail.error, 'Unsupported media type')
    t.match(detail.message, /^Content-Encoding \S+ is not supported; send the body uncompressed$/)
  }
  t.equal(await apiCalls(), before, 'nothing counted')
  const identity = await consume({ 'content-type': 'application/json', 'content-encoding': 'identity' })
  t.equal(identity.statusCode, 200, 'identity is no encoding')
  t.equal(await apiCalls(), before + 1)
})

t.test('content-encoding: requests without a body are not concerned', async (t) => {
  const res = await h.app.inject({ url: '/api/usage/status', headers: { ...user.headers, 'content-encoding': 'gzip', 'content-type': 'application/json; charset=utf-16' } })
  t.equal(res.statusCode, 200)
})

t.test('content-type: other media types keep their 415 (DESIGN 1.8)', async (t) => {
  const res = await consume({ 'content-type': 'text/plain; charset=utf-16' })
  t.equal(res.statusCode, 415)
  t.match(envelope(res.body).message, /^Content-Type text\/plain; charset=utf-16 is not supported; send application\/json$/)
})

t.test('parseContentType', async (t) => {
  t.same(parseContentType('Application/JSON ; charset="UTF-8"'), { mediaType: 'application/json', charset: 'utf-8' })
  t.same(parseContentType('application/json'), { mediaType: 'application/json' })
  t.same(parseContentType('application/json; boundary=x'), { mediaType: 'application/json' })
})

/**
 * DESIGN.md 1.8: every non-2xx answer is `{"detail": {"error", "message", ...}}`; 5xx never leak
 * internals; oversized, non-JSON and malformed bodies are 413 / 415 / 400.
 */
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { Type } from 'typebox'
import { InvalidAmountError } from '../../src/metrics.ts'
import { UnknownTierError, UsageUnavailableError } from '../../src/usage/errors.ts'
import { HttpError, describeValidation, errorBody } from '../../src/http/errors.ts'
import { buildTestApp } from '../helpers/app.ts'
import { envelope } from './envelope.ts'

const Body = Type.Object(
  { metric: Type.Union([Type.Literal('deployments'), Type.Literal('storage')]), amount: Type.Number(), note: Type.Optional(Type.String()) },
  { additionalProperties: false },
)

function routes(app: FastifyInstance): void {
  app.post('/test/echo', { schema: { body: Body } }, async (request) => request.body)
  app.get('/test/params/:id', { schema: { params: Type.Object({ id: Type.String({ format: 'uuid' }) }) } }, async () => ({}))
  app.get('/test/boom', async () => {
    throw new Error('connection string postgres://admin:hunter2@db/prod exploded')
  })
  app.get('/test/amount', async () => {
    throw new InvalidAmountError('metrics.storage must have at most 6 decimal places', 'metrics.storage')
  })
  app.get('/test/unavailable', async () => {
    throw new UsageUnavailableError()
  })
  app.put('/test/tier-body', async () => {
    throw new UnknownTierError('gold')
  })
  app.put('/test/limits/:tier', async () => {
    throw new UnknownTierError('gold')
  })
  app.get('/test/teapot', async () => {
    throw new HttpError(418, 'Teapot', 'Short and stout', { spout: true }, { 'X-Test': 'yes' })
  })
}

const { app } = await buildTestApp(t, { routes })
const json = { 'content-type': 'application/json' }

t.test('unknown route: 404 envelope', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/nope?x=1' })
  t.equal(res.statusCode, 404)
  t.same(envelope(res.body), { error: 'Not found', message: 'Route GET /nope not found' })
})

t.test('a thrown error is a 500 that leaks neither message nor stack', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/test/boom' })
  t.equal(res.statusCode, 500)
  const detail = envelope(res.body)
  t.equal(detail.error, 'Internal server error')
  t.notMatch(res.body, /hunter2|exploded|at .*\.ts|stack/)
})

t.test('body over 16 KiB: 413', async (t) => {
  const payload = JSON.stringify({ metric: 'deployments', amount: 1, note: 'x'.repeat(17_000) })
  const res = await app.inject({ method: 'POST', url: '/test/echo', headers: json, payload })
  t.equal(res.statusCode, 413)
  t.same(envelope(res.body), { error: 'Payload too large', message: 'Request body exceeds 16384 bytes' })
})

t.test('a body that is not application/json: 415', async (t) => {
  const res = await app.inject({ method: 'POST', url: '/test/echo', headers: { 'content-type': 'text/plain' }, payload: 'metric=deployments' })
  t.equal(res.statusCode, 415)
  const detail = envelope(res.body)
  t.equal(detail.error, 'Unsupported media type')
  t.match(detail.message, /text\/plain.*application\/json/)
})

t.test('malformed, empty and prototype-poisoned JSON: 400 Invalid JSON', async (t) => {
  for (const payload of ['{"metric": "deployments",', '{"__proto__": {"admin": true}, "metric": "deployments", "amount": 1}',
    '{"constructor": {"prototype": {"admin": true}}}', '']) {
    const res = await app.inject({ method: 'POST', url: '/test/echo', headers: json, payload })
    t.equal(res.statusCode, 400, JSON.stringify(payload))
    t.equal(envelope(res.body).error, 'Invalid JSON')
  }
})

t.test('schema violations: 400 naming the field, no type coercion, no stripping', async (t) => {
  const cases: Array<[unknown, string, RegExp]> = [
    [{ metric: 'deployments', amount: '5' }, 'amount', /^amount must be a number$/],
    [{ metric: 'deployments' }, 'amount', /^amount is required$/],
    [{ metric: 'deployments', amount: 1, extra: 1 }, 'extra', /^extra is not an accepted property$/],
    [[1], 'body', /^body must be an object$/],
  ]
  for (const [payload, field, message] of cases) {
    const res = await app.inject({ method: 'POST', url: '/test/echo', headers: json, payload: JSON.stringify(payload) })
    t.equal(res.statusCode, 400, JSON.stringify(payload))
    const detail = envelope(res.body)
    t.equal(detail.error, 'Invalid request')
    t.equal(detail.field, field)
    t.match(detail.message, message)
  }
  const metric = await app.inject({ method: 'POST', url: '/test/echo', headers: json, payload: { metric: 'bananas', amount: 1 } })
  t.equal(metric.statusCode, 400)
  t.same(envelope(metric.body), { error: 'Invalid request', message: 'metric must be one of deployments, storage', field: 'metric' })
  const param = await app.inject({ method: 'GET', url: '/test/params/not-a-uuid' })
  t.equal(param.statusCode, 400)
  t.same(envelope(param.body), { error: 'Invalid request', message: 'params.id must be a UUID', field: 'params.id' })
})

t.test('domain errors map to their status', async (t) => {
  const amount = await app.inject({ url: '/test/amount' })
  t.equal(amount.statusCode, 400)
  t.same(envelope(amount.body), { error: 'Invalid request', message: 'metrics.storage must have at most 6 decimal places', field: 'metrics.storage' })

  const unavailable = await app.inject({ url: '/test/unavailable' })
  t.equal(unavailable.statusCode, 503)
  t.equal(unavailable.headers['retry-after'], '1')
  t.equal(envelope(unavailable.body).error, 'Service not available')

  const body = await app.inject({ method: 'PUT', url: '/test/tier-body' })
  t.equal(body.statusCode, 400, 'an unknown tier in the body is bad input')
  t.match(envelope(body.body), { error: 'Invalid request', field: 'tier', tier: 'gold' })
  const path = await app.inject({ method: 'PUT', url: '/test/limits/gold' })
  t.equal(path.statusCode, 404, 'an unknown tier in the path is a missing resource')
  t.match(envelope(path.body), { error: 'Not found', tier: 'gold' })

  const teapot = await app.inject({ url: '/test/teapot' })
  t.equal(teapot.statusCode, 418)
  t.equal(teapot.headers['x-test'], 'yes')
  t.same(envelope(teapot.body), { error: 'Teapot', message: 'Short and stout', spout: true })
})

t.test('every answer carries the request id; a given x-request-id is kept', async (t) => {
  const res = await app.inject({ url: '/nope', headers: { 'x-request-id': 'trace-123' } })
  t.equal(res.headers['x-request-id'], 'trace-123')
  t.match((await app.inject({ url: '/nope' })).headers['x-request-id'], /^[0-9a-f-]{36}$/)
})

t.test('errorBody and describeValidation', async (t) => {
  t.same(errorBody('E', 'm', { error: 'x', message: 'y', n: 1 }), { detail: { error: 'E', message: 'm', n: 1 } })
  t.same(describeValidation({ instancePath: '/metrics/deployments', keyword: 'type', params: { type: 'integer' } }, 'body'),
    { field: 'metrics.deployments', message: 'metrics.deployments must be an integer' })
  t.same(describeValidation({ instancePath: '', keyword: 'required', params: { missingProperty: 'tier' } }, 'body'),
    { field: 'tier', message: 'tier is required' })
})

/**
 * The OpenAPI document at /docs/json: an OpenAPI 3 document that lists every route of DESIGN 1.8
 * with its method, the bearerAuth scheme on the routes that need a token, the answers each route
 * can give (200/201 and its 4xx/5xx) and the request bodies; and /docs serves the Swagger UI.
 * No OpenAPI validator is a dependency, so the structural rules of OAS 3.0 that matter here are
 * checked directly, and every schema must compile with Ajv.
 */
import t from 'tap'
import { Ajv } from 'ajv'
import { buildTestApp } from '../helpers/app.ts'

type Json = Record<string, unknown>
interface Operation {
  tags?: string[]
  summary?: string
  security?: Record<string, string[]>[]
  parameters?: { name: string; in: string; required?: boolean; schema?: Json }[]
  requestBody?: { required?: boolean; content?: Record<string, { schema?: Json }> }
  responses?: Record<string, { description?: string; content?: Record<string, { schema?: Json }>; headers?: Record<string, Json> }>
}

const BEARER = [{ bearerAuth: [] }]
// DESIGN 1.8: route, method, who, the success status and the error statuses it must document.
const ROUTES: [string, string, 'anyone' | 'user' | 'admin', number, number[]][] = [
  ['/health', 'get', 'anyone', 200, []],
  ['/ready', 'get', 'anyone', 200, [503]],
  ['/api/usage/status', 'get', 'user', 200, [401, 503]],
  ['/api/usage/check-limit', 'post', 'user', 200, [400, 401, 413, 415, 503]],
  ['/api/usage/consume', 'post', 'user', 200, [400, 401, 413, 415, 422, 429, 503]],
  ['/api/usage/increment', 'post', 'user', 200, [400, 401, 413, 415, 422, 503]],
  ['/api/usage/admin/manual-reset', 'post', 'admin', 200, [400, 401, 403, 415, 503]],
  ['/api/usage/admin/users/{id}/status', 'get', 'admin', 200, [400, 401, 403, 404]],
  ['/api/usage/admin/users/{id}/tier', 'put', 'admin', 200, [400, 401, 403, 404]],
  ['/api/usage/admin/limits', 'get', 'admin', 200, [401, 403]],
  ['/api/usage/admin/limits/{tier}', 'put', 'admin', 200, [400, 401, 403, 404]],
  ['/api/usage/admin/top', 'get', 'admin', 200, [400, 401, 403]],
  ['/api/usage/admin/near-limits', 'get', 'admin', 200, [400, 401, 403]],
  ['/api/usage/admin/history', 'get', 'admin', 200, [400, 401, 403]],
  ['/api/usage/admin/events', 'get', 'admin', 200, [400, 401, 403]],
  ['/api/usage/reservations', 'post', 'user', 201, [400, 401, 413, 415, 422, 429, 503]],
  ['/api/usage/reservations/{id}/commit', 'post', 'user', 200, [400, 401, 404, 409, 413, 415, 503]],
  ['/api/usage/reservations/{id}', 'delete', 'user', 200, [401, 404, 409, 503]],
  ['/api/deploy', 'post', 'user', 201, [401, 429, 503]],
]

t.test('GET /docs/json is an OpenAPI 3 document of every route', async (t) => {
  const { app } = await buildTestApp(t)
  const res = await app.inject({ url: '/docs/json' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  const doc = res.json() as { openapi: string; info: Json; paths: Record<string, Record<string, Operation>>; components: { securitySchemes: Json; schemas?: Json } }

  t.match(doc.openapi, /^3\.\d+\.\d+$/, 'an OpenAPI 3 version')
  t.type(doc.info.title, 'string')
  t.type(doc.info.version, 'string')
  t.same(doc.components.securitySchemes.bearerAuth, { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' })

  const listed = Object.entries(doc.paths).flatMap(([path, item]) => Object.keys(item).map((m) => `${m.toUpperCase()} ${path}`)).sort()
  const expected = ROUTES.map(([path, method]) => `${method.toUpperCase()} ${path}`).sort()
  t.same(listed, expected, 'exactly the routes of DESIGN 1.8 (the docs routes are hidden)')

  const ajv = new Ajv({ strict: false, allErrors: true })
  ajv.addKeyword('example')
  const compiles = (t: Tap, schema: Json | undefined, what: string) => {
    if (!schema) return t.fail(`${what}: no schema`)
    try {
      ajv.compile(schema)
      t.pass(`${what}: schema compiles`)
    } catch (err) {
      t.fail(`${what}: ${(err as Error).message}`)
    }
  }
  type Tap = typeof t

  for (const [path, method, who, success, errors] of ROUTES) {
    await t.test(`${method.toUpperCase()} ${path}`, async (t) => {
      const op = doc.paths[path]?.[method]
      if (!op) return t.fail('missing')
      const responses = op.responses ?? {}
      t.ok(responses[String(success)], `documents ${success}`)
      for (const code of errors) t.ok(responses[String(code)], `documents ${code}`)
      for (const [code, response] of Object.entries(responses)) {
        t.match(code, /^[1-5]\d\d$/, 'status codes are HTTP statuses')
        t.type(response.description, 'string', `${code} has a description (required by OAS)`)
        // (/health and /ready are documented by health.ts, which is not part of this API surface)
        if (path.startsWith('/api/')) t.not(response.description, 'Default Response', `${code} says what it means`)
        const schema = response.content?.['application/json']?.schema
        compiles(t, schema, `${code}`)
        if (Number(code) >= 400 && path !== '/ready') {
          t.match(schema, { type: 'object', properties: { detail: { properties: { error: { type: 'string' }, message: { type: 'string' } } } } }, `${code} is the error envelope`)
        }
      }
      if (who === 'anyone') t.notOk(op.security, 'no token needed')
      else t.same(op.security, BEARER, 'bearerAuth')
      if (who === 'admin') t.same(op.tags, ['admin'])
      if (path.startsWith('/api/')) t.type(op.summary, 'string', 'summarised')
      // every {param} of the path is declared
      for (const name of [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1])) {
        const param = op.parameters?.find((p) => p.in === 'path' && p.name === name)
        t.ok(param, `path parameter ${name} declared`)
        t.equal(param?.required, true, `path parameter ${name} required`)
      }
      if (op.requestBody) {
        compiles(t, op.requestBody.content?.['application/json']?.schema, 'request body')
        t.same(Object.keys(op.requestBody.content ?? {}), ['application/json'], 'JSON bodies only')
      }
    })
  }

  await t.test('details that matter to clients', async (t) => {
    const consume = doc.paths['/api/usage/consume']?.post
    const body = consume?.requestBody?.content?.['application/json']?.schema as Json
    t.match(body, {
      type: 'object',
      additionalProperties: false,
      properties: {
        metric: { enum: ['deployments', 'api_calls', 'compute_hours', 'storage'] },
        amount: { type: 'number' },
        metrics: { type: 'object' },
        idempotency_key: { type: 'string', maxLength: 128 },
      },
    })
    t.equal(consume?.requestBody?.required, true)
    const tooMany = consume?.responses?.['429']
    t.match(tooMany?.content?.['application/json']?.schema, {
      properties: { detail: { properties: { error: {}, message: {}, current: {}, limit: {}, tier: {}, metric: {} } } },
    }, '429 documents the spec body')
    for (const header of ['Retry-After', 'RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset', 'RateLimit-Policy', 'RateLimit']) {
      t.ok(tooMany?.headers?.[header], `429 documents ${header}`)
    }
    const reset = doc.paths['/api/usage/admin/manual-reset']?.post
    t.equal(reset?.requestBody?.required, false, "manual-reset's body is optional (the spec's curl sends none)")
    t.notOk(JSON.stringify(doc).includes('x-body-optional'), 'the internal marker does not leak')
    const status = doc.paths['/api/usage/status']?.get?.responses?.['200']?.content?.['application/json']?.schema
    t.match(status, { properties: { user_id: {}, tier: {}, date: {}, resets_at: {}, metrics: { properties: { deployments: {}, api_calls: {}, compute_hours: {}, storage: {} } } } })
    const id = doc.paths['/api/usage/admin/users/{id}/status']?.get?.parameters?.find((p) => p.name === 'id')
    t.match(id?.schema, { type: 'string', format: 'uuid' })
  })
})

t.test('/docs serves the Swagger UI', async (t) => {
  const { app } = await buildTestApp(t)
  for (const url of ['/docs', '/docs/']) {
    const res = await app.inject({ url })
    t.equal(res.statusCode, 200, url)
    t.match(res.headers['content-type'], /^text\/html/)
    t.match(res.body, /<html/i)
    t.match(res.body, /swagger/i)
  }
  const init = await app.inject({ url: '/docs/static/swagger-initializer.js' })
  t.equal(init.statusCode, 200, 'the UI assets are served')
  t.match(init.body, /json/, 'and point at the document')
})

/**
 * The guard of DESIGN 1.9: `requireUsageLimit(metric, amount)` and the route-config form
 * `config: { usage: {...} }` consume before the handler and refund when the handler answers
 * >= 400 or throws; a success keeps the count; a bad guard stops the app at start-up.
 */
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { HttpError } from '../../src/http/errors.ts'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'

function routes(app: FastifyInstance): void {
  const guarded = { onRequest: app.requireUser, preHandler: app.requireUsageLimit('deployments', 1) }
  app.post('/t/ok', guarded, async (_req, reply) => reply.code(201).send({ ok: true }))
  app.post('/t/throw', guarded, async () => {
    throw new Error('handler blew up')
  })
  app.post('/t/http-error', guarded, async () => {
    throw new HttpError(409, 'Conflict', 'already deploying')
  })
  app.post('/t/400', guarded, async (_req, reply) => reply.code(400).send({ detail: { error: 'Invalid request', message: 'no' } }))
  app.post('/t/500', guarded, async (_req, reply) => reply.code(500).send({ detail: { error: 'Internal server error', message: 'no' } }))
  app.post('/t/302', guarded, async (_req, reply) => reply.redirect('/elsewhere'))
  app.post('/t/sync-throw', guarded, () => {
    throw new Error('sync blew up')
  })
  app.post('/t/bulk', { onRequest: app.requireUser, preHandler: app.requireUsageLimit('api_calls', 10) }, async () => ({ ok: true }))
  // The route-config form: two metrics at once.
  const build = { onRequest: app.requireUser, config: { usage: { compute_hours: 0.5, api_calls: 1 } } }
  app.post('/t/build', build, async (_req, reply) => reply.code(201).send({ built: true }))
  app.post('/t/build-fails', build, async () => {
    throw new Error('build failed')
  })
  app.post('/t/build-400', build, async (_req, reply) => reply.code(422).send({ detail: { error: 'Unprocessable', message: 'no' } }))
  // Several guards on one route are merged into one atomic consume.
  app.post('/t/two-guards', {
    onRequest: app.requireUser,
    preHandler: [app.requireUsageLimit('deployments', 1), app.requireUsageLimit('api_calls', 10)],
  }, async (_req, reply) => reply.code(201).send({ ok: true }))
  app.post('/t/mixed', {
    onRequest: app.requireUser,
    preHandler: app.requireUsageLimit('compute_hours', 0.25),
    config: { usage: { compute_hours: 0.5, api_calls: 1 } },
  }, async (request, reply) => {
    if ((request.query as { fail?: string }).fail) throw new Error('mixed failed')
    return reply.code(201).send({ ok: true })
  })
  // Guarded but without authentication in front: no user to charge.
  app.post('/t/anonymous', { preHandler: app.requireUsageLimit('deployments', 1) }, async () => ({ ok: true }))
}

async function usage(h: TestApp, headers: Record<string, string>): Promise<Record<string, number>> {
  const res = await h.app.inject({ method: 'GET', url: '/api/usage/status', headers })
  const metrics = res.json().metrics as Record<string, { current: number }>
  return Object.fromEntries(Object.entries(metrics).map(([m, s]) => [m, s.current]))
}

t.test('guarded handlers: refund on failure, keep on success', async (t) => {
  const h = await buildTestApp(t, { routes })
  const u = h.user()
  const post = (url: string) => h.app.inject({ method: 'POST', url, headers: u.headers })

  const ok = await post('/t/ok')
  t.equal(ok.statusCode, 201)
  t.equal(ok.headers['ratelimit-remaining'], '9', 'RateLimit headers on a guarded success')
  t.same(await usage(h, u.headers), { deployments: 1, api_calls: 0, compute_hours: 0, storage: 0 })

  for (const [url, status] of [
    ['/t/throw', 500], ['/t/sync-throw', 500], ['/t/http-error', 409], ['/t/400', 400], ['/t/500', 500],
  ] as const) {
    const res = await post(url)
    t.equal(res.statusCode, status, `${url} answers ${status}`)
    t.type(res.json().detail?.error, 'string', `${url}: error envelope`)
    t.equal((await usage(h, u.headers)).deployments, 1, `${url}: refunded`)
  }
  const thrown = await post('/t/throw')
  t.notMatch(thrown.body, /blew up/, 'a 500 never leaks the error message')

  const redirect = await post('/t/302')
  t.equal(redirect.statusCode, 302)
  t.equal((await usage(h, u.headers)).deployments, 2, 'a 3xx is not a failure: kept')

  const bulk = await post('/t/bulk')
  t.equal(bulk.statusCode, 200)
  t.equal((await usage(h, u.headers)).api_calls, 10, 'a bulk guard consumes its amount')
})

t.test('a refund restores exactly the room it took, also at the limit', async (t) => {
  const h = await buildTestApp(t, { routes })
  const u = h.user()
  const post = (url: string) => h.app.inject({ method: 'POST', url, headers: u.headers })
  for (let i = 0; i < 9; i++) t.equal((await post('/t/ok')).statusCode, 201)
  // the 10th unit is taken and given back, over and over
  for (let i = 0; i < 5; i++) t.equal((await post('/t/throw')).statusCode, 500)
  t.equal((await usage(h, u.headers)).deployments, 9)
  t.equal((await post('/t/ok')).statusCode, 201, 'the last unit is still available')
  const denied = await post('/t/throw')
  t.equal(denied.statusCode, 429, 'the guard denies before the handler runs')
  t.equal((await usage(h, u.headers)).deployments, 10, 'a denial is not refunded (nothing was taken)')
})

t.test('route-config form consumes both metrics and refunds both', async (t) => {
  const h = await buildTestApp(t, { routes })
  const u = h.user()
  const post = (url: string) => h.app.inject({ method: 'POST', url, headers: u.headers })

  const ok = await post('/t/build')
  t.equal(ok.statusCode, 201)
  t.ok(ok.headers['ratelimit-policy'], 'RateLimit headers on success')
  t.match(ok.headers['ratelimit-policy'], /"api_calls";q=5000/)
  t.match(ok.headers['ratelimit-policy'], /"compute_hours";q=10/)
  t.same(await usage(h, u.headers), { deployments: 0, api_calls: 1, compute_hours: 0.5, storage: 0 })

  t.equal((await post('/t/build-fails')).statusCode, 500)
  t.same(await usage(h, u.headers), { deployments: 0, api_calls: 1, compute_hours: 0.5, storage: 0 }, 'both refunded after a throw')
  t.equal((await post('/t/build-400')).statusCode, 422)
  t.same(await usage(h, u.headers), { deployments: 0, api_calls: 1, compute_hours: 0.5, storage: 0 }, 'both refunded after a 4xx')

  // 19 more successes fill compute_hours to 10; the next is a 429 naming compute_hours, api_calls untouched
  for (let i = 0; i < 19; i++) t.equal((await post('/t/build')).statusCode, 201)
  const denied = await post('/t/build')
  t.equal(denied.statusCode, 429)
  t.has(denied.json(), { detail: { error: 'Usage limit exceeded', message: 'Daily compute_hours limit exceeded', current: 10, limit: 10, tier: 'free', metric: 'compute_hours' } })
  t.same(await usage(h, u.headers), { deployments: 0, api_calls: 20, compute_hours: 10, storage: 0 })
})

t.test("a route's guards are merged: all counted, all or none, all refunded", async (t) => {
  const h = await buildTestApp(t, { routes })
  const u = h.user()
  const post = (url: string) => h.app.inject({ method: 'POST', url, headers: u.headers })

  const two = await post('/t/two-guards')
  t.equal(two.statusCode, 201)
  t.same(await usage(h, u.headers), { deployments: 1, api_calls: 10, compute_hours: 0, storage: 0 }, 'both guards counted')

  const mixed = await post('/t/mixed')
  t.equal(mixed.statusCode, 201)
  t.same(await usage(h, u.headers), { deployments: 1, api_calls: 11, compute_hours: 0.75, storage: 0 }, 'requireUsageLimit + config.usage summed')
  t.equal((await post('/t/mixed?fail=1')).statusCode, 500)
  t.same(await usage(h, u.headers), { deployments: 1, api_calls: 11, compute_hours: 0.75, storage: 0 }, 'all refunded')

  // fill deployments: then the two-guard route is denied and api_calls is not counted either
  t.equal((await h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: u.headers, payload: { metric: 'deployments', amount: 9 } })).statusCode, 200)
  const denied = await post('/t/two-guards')
  t.equal(denied.statusCode, 429)
  t.equal(denied.json().detail.metric, 'deployments')
  t.same(await usage(h, u.headers), { deployments: 10, api_calls: 11, compute_hours: 0.75, storage: 0 }, 'all or none')
})

t.test('a guard without an authenticated user is a 401 and counts nothing', async (t) => {
  const h = await buildTestApp(t, { routes })
  const res = await h.app.inject({ method: 'POST', url: '/t/anonymous' })
  t.equal(res.statusCode, 401)
  t.equal(res.json().detail.error, 'Unauthorized')
})

t.test('a bad guard stops the app at start-up, naming the problem', async (t) => {
  await t.rejects(
    buildTestApp(t, {
      routes: (app) => {
        app.post('/x', { config: { usage: { nope: 1 } as never } }, async () => ({}))
      },
    }),
    /unknown metric "nope"/,
    'config.usage with an unknown metric',
  )
  await t.rejects(
    buildTestApp(t, {
      routes: (app) => {
        app.post('/x', { preHandler: app.requireUsageLimit('nope' as never) }, async () => ({}))
      },
    }),
    /requireUsageLimit\('nope', 1\).*unknown metric "nope"/,
    "requireUsageLimit('nope')",
  )
  await t.rejects(
    buildTestApp(t, {
      routes: (app) => {
        app.post('/x', { preHandler: app.requireUsageLimit('deployments', 0.5) }, async () => ({}))
      },
    }),
    /deployments.*whole number/,
    'a fractional amount of a count metric',
  )
  await t.rejects(
    buildTestApp(t, {
      routes: (app) => {
        app.post('/x', { config: { usage: { compute_hours: -1 } } }, async () => ({}))
      },
    }),
    /compute_hours.*greater than 0/,
    'a negative amount',
  )
  await t.rejects(
    buildTestApp(t, {
      routes: (app) => {
        app.post('/x', { config: { usage: {} } }, async () => ({}))
      },
    }),
    /usage must be an object/,
    'an empty config.usage',
  )
})

/**
 * Idempotency keys over HTTP (DESIGN 1.8): a repeat returns the first call's status and body — a
 * 429 stays a 429 — with `idempotent-replayed: true`, and counts nothing; the same key with other
 * parameters is a 422 envelope; keys are scoped to the user.
 */
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'

const CONSUME = '/api/usage/consume'

function helpers(h: TestApp, headers: Record<string, string>) {
  return {
    post: (url: string, payload: object) => h.app.inject({ method: 'POST', url, headers, payload }),
    async current(metric: string): Promise<number> {
      const res = await h.app.inject({ method: 'GET', url: '/api/usage/status', headers })
      return res.json().metrics[metric].current as number
    },
  }
}

const RATE_HEADERS = ['ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset', 'ratelimit-policy', 'ratelimit', 'retry-after']
const pick = (headers: Record<string, unknown>) => Object.fromEntries(RATE_HEADERS.filter((n) => n in headers).map((n) => [n, headers[n]]))

t.test('a repeated key replays a 200 and counts nothing', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const { post, current } = helpers(h, u.headers)
  const body = { metric: 'compute_hours', amount: 1.5, idempotency_key: 'build-42' }
  const first = await post(CONSUME, body)
  t.equal(first.statusCode, 200)
  t.notOk('idempotent-replayed' in first.headers, 'the first call is not a replay')
  t.equal(await current('compute_hours'), 1.5)

  for (let i = 0; i < 3; i++) {
    const again = await post(CONSUME, body)
    t.equal(again.statusCode, 200)
    t.equal(again.headers['idempotent-replayed'], 'true')
    t.equal(again.body, first.body, "byte for byte the first call's body")
    t.same(pick(again.headers), pick(first.headers), 'and its RateLimit fields')
  }
  t.equal(await current('compute_hours'), 1.5, 'counted once')

  // other calls in between do not change what the key replays
  t.equal((await post(CONSUME, { metric: 'compute_hours', amount: 1 })).statusCode, 200)
  const later = await post(CONSUME, body)
  t.equal(later.body, first.body)
  t.equal(await current('compute_hours'), 2.5)

  // the property order of the request does not matter
  const reordered = await post(CONSUME, { idempotency_key: 'build-42', amount: 1.5, metric: 'compute_hours' })
  t.equal(reordered.statusCode, 200)
  t.equal(reordered.headers['idempotent-replayed'], 'true')
})

t.test('a denial stays a denial', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const { post, current } = helpers(h, u.headers)
  t.equal((await post(CONSUME, { metric: 'deployments', amount: 9 })).statusCode, 200)
  const body = { metric: 'deployments', amount: 2, idempotency_key: 'deploy-2' }
  const first = await post(CONSUME, body)
  t.equal(first.statusCode, 429)
  t.has(first.json(), { detail: { error: 'Usage limit exceeded', current: 9, limit: 10, tier: 'free', metric: 'deployments' } })

  // room is made (a reset), yet the key replays the denial
  const a = h.admin()
  t.equal((await h.app.inject({ method: 'POST', url: '/api/usage/admin/manual-reset', headers: a.headers, payload: { user_id: u.id } })).statusCode, 200)
  t.equal(await current('deployments'), 0)
  const again = await post(CONSUME, body)
  t.equal(again.statusCode, 429, 'still 429')
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.equal(again.body, first.body, 'the same body')
  t.equal(again.headers['retry-after'], first.headers['retry-after'])
  t.equal(await current('deployments'), 0, 'nothing counted')
  // a new key is a new decision
  t.equal((await post(CONSUME, { ...body, idempotency_key: 'deploy-3' })).statusCode, 200)
  t.equal(await current('deployments'), 2)
})

t.test('the multi-metric form and increment replay too', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const { post, current } = helpers(h, u.headers)
  const multi = { metrics: { deployments: 1, api_calls: 25 }, idempotency_key: 'job-1' }
  const first = await post(CONSUME, multi)
  t.equal(first.statusCode, 200)
  const again = await post(CONSUME, { idempotency_key: 'job-1', metrics: { api_calls: 25, deployments: 1 } })
  t.equal(again.statusCode, 200)
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.equal(again.body, first.body)
  t.equal(await current('api_calls'), 25)

  const inc = { metric: 'storage', amount: -0.5, idempotency_key: 'delete-file-9' }
  t.equal((await post('/api/usage/increment', { metric: 'storage', amount: 2 })).statusCode, 200)
  const i1 = await post('/api/usage/increment', inc)
  const i2 = await post('/api/usage/increment', inc)
  t.equal(i1.statusCode, 200)
  t.equal(i2.statusCode, 200)
  t.equal(i2.headers['idempotent-replayed'], 'true')
  t.equal(i2.body, i1.body)
  t.equal(await current('storage'), 1.5, 'decremented once')
})

t.test('the same key with other parameters: 422, nothing counted', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const { post, current } = helpers(h, u.headers)
  t.equal((await post(CONSUME, { metric: 'api_calls', amount: 5, idempotency_key: 'k' })).statusCode, 200)
  for (const other of [
    { metric: 'api_calls', amount: 6, idempotency_key: 'k' },
    { metric: 'api_calls', idempotency_key: 'k' },
    { metric: 'deployments', amount: 5, idempotency_key: 'k' },
    { metrics: { api_calls: 5, deployments: 1 }, idempotency_key: 'k' },
  ]) {
    const res = await post(CONSUME, other)
    t.equal(res.statusCode, 422, JSON.stringify(other))
    t.same(res.json(), {
      detail: {
        error: 'Idempotency key reuse',
        message: 'This idempotency_key was already used with different parameters',
        field: 'idempotency_key',
      },
    })
    t.notOk('idempotent-replayed' in res.headers)
  }
  const viaIncrement = await post('/api/usage/increment', { metric: 'api_calls', amount: 5, idempotency_key: 'k' })
  t.equal(viaIncrement.statusCode, 422, 'increment is another operation than consume')
  t.equal(viaIncrement.json().detail.error, 'Idempotency key reuse')
  t.equal(await current('api_calls'), 5)
  t.equal(await current('deployments'), 0)
})

t.test('keys are scoped to the user', async (t) => {
  const h = await buildTestApp(t)
  const a = h.user()
  const b = h.user()
  const ha = helpers(h, a.headers)
  const hb = helpers(h, b.headers)
  t.equal((await ha.post(CONSUME, { metric: 'deployments', idempotency_key: 'shared' })).statusCode, 200)
  const other = await hb.post(CONSUME, { metric: 'deployments', idempotency_key: 'shared' })
  t.equal(other.statusCode, 200)
  t.notOk('idempotent-replayed' in other.headers, "another user's key is not a replay")
  const conflict = await hb.post(CONSUME, { metric: 'api_calls', idempotency_key: 'shared' })
  t.equal(conflict.statusCode, 422, 'b has its own key now')
  t.equal(await ha.current('deployments'), 1)
  t.equal(await hb.current('deployments'), 1)
})

t.test('concurrent repeats of one key count once', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const { post, current } = helpers(h, u.headers)
  await current('deployments')
  const responses = await Promise.all(Array.from({ length: 30 }, () => post(CONSUME, { metric: 'deployments', amount: 3, idempotency_key: 'race' })))
  t.ok(responses.every((r) => r.statusCode === 200))
  t.equal(responses.filter((r) => r.headers['idempotent-replayed'] !== 'true').length, 1, 'one executed')
  t.equal(new Set(responses.map((r) => r.body)).size, 1, 'one body')
  t.equal(await current('deployments'), 3)
})

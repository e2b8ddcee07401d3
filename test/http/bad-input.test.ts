/**
 * Invariant 7 over HTTP: the catalogue of bad input, each refused with the envelope
 * `{"detail": {"error", "message"}}` — 400 with a message naming the field, 413 for a body too
 * large, 415 for a body that is not JSON — and nothing counted: the user's status and every Redis
 * key under the app's prefix are exactly as they were.
 */
import t from 'tap'
import type { Test } from 'tap'
import { Redis } from 'ioredis'
import { buildTestApp } from '../helpers/app.ts'
import { TEST_REDIS_URL, closeRedis } from '../helpers/redis.ts'

interface Case {
  name: string
  method?: 'POST' | 'PUT' | 'GET'
  url: string
  /** Raw body, sent as is. */
  body?: string
  contentType?: string | null
  admin?: boolean
  status: number
  /** The error title. */
  error?: string
  /** Must appear in the message (the field's name, usually). */
  names: string | RegExp
  /** detail.field, when the answer names one. */
  field?: string
}

const CONSUME = '/api/usage/consume'
const INCREMENT = '/api/usage/increment'
const CHECK = '/api/usage/check-limit'
const json = (v: unknown) => JSON.stringify(v)

function catalogue(userId: string): Case[] {
  const cases: Case[] = []
  // --- metric
  for (const url of [CHECK, CONSUME, INCREMENT]) {
    const amount = url === INCREMENT ? { amount: 1 } : {}
    cases.push(
      { name: `${url}: unknown metric`, url, body: json({ metric: 'bananas', ...amount }), status: 400, names: /^metric must be one of deployments, api_calls, compute_hours, storage$/, field: 'metric' },
      { name: `${url}: metric as a number`, url, body: json({ metric: 1, ...amount }), status: 400, names: /^metric /, field: 'metric' },
      { name: `${url}: metric as an array`, url, body: json({ metric: ['deployments'], ...amount }), status: 400, names: /^metric /, field: 'metric' },
      { name: `${url}: metric as an object`, url, body: json({ metric: { name: 'deployments' }, ...amount }), status: 400, names: /^metric /, field: 'metric' },
      { name: `${url}: metric missing`, url, body: json({ ...(url === INCREMENT ? amount : { amount: 1 }) }), status: 400, names: /metric/, field: 'metric' },
    )
  }
  // --- prototype poisoning, as raw JSON text
  for (const body of [
    '{"metric": "deployments", "__proto__": {"admin": true}}',
    '{"__proto__": {"amount": 1}, "metric": "deployments"}',
    '{"metrics": {"__proto__": {"deployments": 1}}}',
    '{"metric": "deployments", "constructor": {"prototype": {"admin": true}}}',
  ]) {
    cases.push({ name: `poisoned: ${body}`, url: CONSUME, body, status: 400, error: 'Invalid JSON', names: /__proto__|constructor/ })
  }
  cases.push({ name: 'a plain "constructor" property', url: CONSUME, body: '{"metric": "deployments", "constructor": 1}', status: 400, names: /^constructor is not an accepted property$/, field: 'constructor' })
  // --- amount
  cases.push({ name: 'increment without amount', url: INCREMENT, body: json({ metric: 'api_calls' }), status: 400, names: /^amount is required$/, field: 'amount' })
  const badAmounts: [string, string, RegExp][] = [
    ['"5"', 'a numeric string', /^amount must be a number$/],
    ['true', 'true', /^amount must be a number$/],
    ['null', 'null', /^amount must be a number$/],
    ['[5]', '[5]', /^amount must be a number$/],
    ['{"value": 5}', 'an object', /^amount must be a number$/],
    ['"NaN"', '"NaN"', /^amount must be a number$/],
    ['"Infinity"', '"Infinity"', /^amount must be a number$/],
    ['"-Infinity"', '"-Infinity"', /^amount must be a number$/],
    ['-1', 'negative', /^amount must be greater than 0$/],
    ['0', 'zero', /^amount must not be 0$/],
    ['-0', 'minus zero', /^amount must not be 0$/],
    ['1e300', '1e300', /^amount must not exceed/],
    ['1e400', '1e400 (parses to Infinity)', /^amount must be (a finite number|a number)/],
    ['1000000001', 'just over 1e9', /^amount must not exceed/],
    ['1.5', 'fractional deployments', /^amount must be a whole number for deployments/],
  ]
  for (const url of [CHECK, CONSUME, INCREMENT]) {
    for (const [raw, what, message] of badAmounts) {
      cases.push({ name: `${url}: amount ${what}`, url, body: `{"metric": "deployments", "amount": ${raw}}`, status: 400, names: message, field: 'amount' })
    }
    cases.push({ name: `${url}: 7 decimals`, url, body: '{"metric": "compute_hours", "amount": 0.1234567}', status: 400, names: /^amount must have at most 6 decimal places$/, field: 'amount' })
    cases.push({ name: `${url}: raw NaN`, url, body: '{"metric": "compute_hours", "amount": NaN}', status: 400, error: 'Invalid JSON', names: /JSON/ })
    cases.push({ name: `${url}: extra property`, url, body: json({ metric: 'deployments', amount: 1, note: 'x' }), status: 400, names: /^note is not an accepted property$/, field: 'note' })
    cases.push({ name: `${url}: user_id in the body`, url, body: json({ metric: 'deployments', amount: 1, user_id: userId }), status: 400, names: /^user_id is not an accepted property$/, field: 'user_id' })
  }
  cases.push(
    { name: 'negative api_calls increment', url: INCREMENT, body: json({ metric: 'api_calls', amount: -5 }), status: 400, names: /^amount must be greater than 0$/, field: 'amount' },
    { name: 'storage: 7 decimals, even negative', url: INCREMENT, body: '{"metric": "storage", "amount": -0.0000001}', status: 400, names: /^amount must have at most 6 decimal places$/, field: 'amount' },
    { name: 'check-limit: negative storage', url: CHECK, body: json({ metric: 'storage', amount: -1 }), status: 400, names: /^amount must be greater than 0$/, field: 'amount' },
    { name: 'consume: negative storage', url: CONSUME, body: json({ metric: 'storage', amount: -1 }), status: 400, names: /^amount must be greater than 0$/, field: 'amount' },
  )
  // --- the metrics form
  cases.push(
    { name: 'consume: both metric and metrics', url: CONSUME, body: json({ metric: 'deployments', metrics: { deployments: 1 } }), status: 400, names: /metric.*metrics/, field: 'metrics' },
    { name: 'consume: both amount and metrics', url: CONSUME, body: json({ amount: 1, metrics: { deployments: 1 } }), status: 400, names: /metrics/, field: 'metrics' },
    { name: 'consume: neither metric nor metrics', url: CONSUME, body: json({ amount: 1 }), status: 400, names: /metric/, field: 'metric' },
    { name: 'consume: an empty body object', url: CONSUME, body: '{}', status: 400, names: /metric/, field: 'metric' },
    { name: 'consume: empty metrics', url: CONSUME, body: json({ metrics: {} }), status: 400, names: /^metrics /, field: 'metrics' },
    { name: 'consume: unknown metric in metrics', url: CONSUME, body: json({ metrics: { deployments: 1, bananas: 1 } }), status: 400, names: /^metrics\.bananas /, field: 'metrics.bananas' },
    { name: 'consume: string amount in metrics', url: CONSUME, body: json({ metrics: { api_calls: '1' } }), status: 400, names: /^metrics\.api_calls must be a number$/, field: 'metrics.api_calls' },
    { name: 'consume: fractional deployments in metrics (one metric)', url: CONSUME, body: json({ metrics: { deployments: 0.5 } }), status: 400, names: /^metrics\.deployments must be a whole number/, field: 'metrics.deployments' },
    { name: 'consume: negative amount in metrics', url: CONSUME, body: json({ metrics: { compute_hours: 1, deployments: -1 } }), status: 400, names: /^metrics\.deployments must be greater than 0$/, field: 'metrics.deployments' },
    { name: 'consume: 7 decimals in metrics', url: CONSUME, body: json({ metrics: { api_calls: 1, compute_hours: 0.1234567 } }), status: 400, names: /^metrics\.compute_hours must have at most 6 decimal places$/, field: 'metrics.compute_hours' },
    { name: 'consume: metrics as an array', url: CONSUME, body: json({ metrics: [['deployments', 1]] }), status: 400, names: /^metrics must be an object$/, field: 'metrics' },
  )
  // --- idempotency keys
  cases.push(
    { name: 'idempotency_key empty', url: CONSUME, body: json({ metric: 'deployments', idempotency_key: '' }), status: 400, names: /^idempotency_key /, field: 'idempotency_key' },
    { name: 'idempotency_key of 129 characters', url: CONSUME, body: json({ metric: 'deployments', idempotency_key: 'k'.repeat(129) }), status: 400, names: /^idempotency_key must be at most 128 characters long$/, field: 'idempotency_key' },
    { name: 'idempotency_key not printable ASCII', url: INCREMENT, body: json({ metric: 'api_calls', amount: 1, idempotency_key: 'clé\n' }), status: 400, names: /^idempotency_key /, field: 'idempotency_key' },
    { name: 'idempotency_key as a number', url: CONSUME, body: json({ metric: 'deployments', idempotency_key: 42 }), status: 400, names: /^idempotency_key must be a string$/, field: 'idempotency_key' },
  )
  // --- body shape, syntax, type, size
  cases.push(
    { name: 'malformed JSON', url: CONSUME, body: '{"metric": "deployments",', status: 400, error: 'Invalid JSON', names: /JSON/ },
    { name: 'single quotes', url: CONSUME, body: "{'metric': 'deployments'}", status: 400, error: 'Invalid JSON', names: /JSON/ },
    { name: 'an empty body with the JSON type', url: CONSUME, body: '', status: 400, error: 'Invalid JSON', names: /empty/ },
    { name: 'no body at all', url: CONSUME, contentType: null, status: 400, names: /^body must be an object$/, field: 'body' },
    { name: 'a JSON array', url: CONSUME, body: '[{"metric": "deployments"}]', status: 400, names: /^body must be an object$/, field: 'body' },
    { name: 'a JSON string', url: CONSUME, body: '"deployments"', status: 400, names: /^body must be an object$/, field: 'body' },
    { name: 'JSON null', url: CONSUME, body: 'null', status: 400, names: /^body must be an object$/, field: 'body' },
    { name: 'text/plain', url: CONSUME, body: json({ metric: 'deployments' }), contentType: 'text/plain', status: 415, error: 'Unsupported media type', names: /text\/plain.*application\/json/ },
    { name: 'a form', url: CONSUME, body: 'metric=deployments&amount=1', contentType: 'application/x-www-form-urlencoded', status: 415, error: 'Unsupported media type', names: /application\/x-www-form-urlencoded/ },
    { name: 'application/jsonx', url: CONSUME, body: json({ metric: 'deployments' }), contentType: 'application/jsonx', status: 415, error: 'Unsupported media type', names: /jsonx/ },
    { name: 'text/plain to check-limit', url: CHECK, body: json({ metric: 'deployments' }), contentType: 'text/plain', status: 415, error: 'Unsupported media type', names: /text\/plain/ },
    { name: 'a 1 MiB body', url: CONSUME, body: json({ metric: 'deployments', pad: 'x'.repeat(1024 * 1024) }), status: 413, error: 'Payload too large', names: /exceeds 16384 bytes/ },
    { name: 'a 1 MiB text/plain body', url: CONSUME, body: 'x'.repeat(1024 * 1024), contentType: 'text/plain', status: 415, error: 'Unsupported media type', names: /text\/plain/ },
  )
  // --- admin routes (admin token): ids, tiers, limits
  const admin = { admin: true }
  cases.push(
    { ...admin, name: 'manual reset: user_id not a UUID', url: '/api/usage/admin/manual-reset', body: json({ user_id: 'not-a-uuid' }), status: 400, names: /^user_id must be a UUID$/, field: 'user_id' },
    { ...admin, name: 'manual reset: user_id a urn:uuid', url: '/api/usage/admin/manual-reset', body: json({ user_id: `urn:uuid:${userId}` }), status: 400, names: /^user_id /, field: 'user_id' },
    { ...admin, name: 'manual reset: user_id a number', url: '/api/usage/admin/manual-reset', body: json({ user_id: 12 }), status: 400, names: /^user_id must be a string$/, field: 'user_id' },
    { ...admin, name: 'manual reset: unknown metric', url: '/api/usage/admin/manual-reset', body: json({ metric: 'bananas' }), status: 400, names: /^metric must be one of/, field: 'metric' },
    { ...admin, name: 'manual reset: extra property', url: '/api/usage/admin/manual-reset', body: json({ everyone: true }), status: 400, names: /^everyone is not an accepted property$/, field: 'everyone' },
    { ...admin, name: 'manual reset: text/plain', url: '/api/usage/admin/manual-reset', body: 'all', contentType: 'text/plain', status: 415, names: /text\/plain/ },
    { ...admin, name: 'user status: id not a UUID', method: 'GET', url: '/api/usage/admin/users/not-a-uuid/status', status: 400, names: /^params\.id must be a UUID$/, field: 'params.id' },
    { ...admin, name: 'user status: id a urn:uuid', method: 'GET', url: `/api/usage/admin/users/urn:uuid:${userId}/status`, status: 400, names: /^params\.id /, field: 'params.id' },
    { ...admin, name: 'user tier: id not a UUID', method: 'PUT', url: '/api/usage/admin/users/12345/tier', body: json({ tier: 'pro' }), status: 400, names: /^params\.id must be a UUID$/, field: 'params.id' },
    { ...admin, name: 'user tier: unknown tier', method: 'PUT', url: `/api/usage/admin/users/${userId}/tier`, body: json({ tier: 'gold' }), status: 400, names: /gold/, field: 'tier' },
    { ...admin, name: 'user tier: not a tier name', method: 'PUT', url: `/api/usage/admin/users/${userId}/tier`, body: json({ tier: 'Gold Plan!' }), status: 400, names: /^tier /, field: 'tier' },
    { ...admin, name: 'user tier: missing', method: 'PUT', url: `/api/usage/admin/users/${userId}/tier`, body: '{}', status: 400, names: /^tier is required$/, field: 'tier' },
    { ...admin, name: 'limits: unknown tier', method: 'PUT', url: '/api/usage/admin/limits/gold', body: json({ max_deployments_per_day: 5 }), status: 404, error: 'Not found', names: /gold/ },
    { ...admin, name: 'limits: negative count', method: 'PUT', url: '/api/usage/admin/limits/free', body: json({ max_deployments_per_day: -1 }), status: 400, names: /^max_deployments_per_day must be at least 0$/, field: 'max_deployments_per_day' },
    { ...admin, name: 'limits: negative decimal', method: 'PUT', url: '/api/usage/admin/limits/free', body: json({ max_compute_hours_per_day: -0.5 }), status: 400, names: /^max_compute_hours_per_day must be at least 0$/, field: 'max_compute_hours_per_day' },
    { ...admin, name: 'limits: fractional count', method: 'PUT', url: '/api/usage/admin/limits/free', body: json({ max_api_calls_per_day: 1.5 }), status: 400, names: /^max_api_calls_per_day must be an integer$/, field: 'max_api_calls_per_day' },
    { ...admin, name: 'limits: 7 decimals', method: 'PUT', url: '/api/usage/admin/limits/free', body: json({ max_storage_gb: 0.1234567 }), status: 400, names: /max_storage_gb must have at most 6 decimal places/, field: 'max_storage_gb' },
    { ...admin, name: 'limits: a string', method: 'PUT', url: '/api/usage/admin/limits/free', body: json({ max_storage_gb: '5' }), status: 400, names: /^max_storage_gb /, field: 'max_storage_gb' },
    { ...admin, name: 'limits: unknown column', method: 'PUT', url: '/api/usage/admin/limits/free', body: json({ max_users: 5 }), status: 400, names: /^max_users is not an accepted property$/, field: 'max_users' },
    { ...admin, name: 'limits: empty', method: 'PUT', url: '/api/usage/admin/limits/free', body: '{}', status: 400, names: /^body /, field: 'body' },
  )
  return cases
}

/** Every key under the prefix with its value (and TTL presence): a snapshot of all counter state. */
async function snapshot(redis: Redis, prefix: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {}
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    cursor = next
    for (const key of keys) {
      const type = await redis.type(key)
      if (type === 'hash') out[key] = await redis.hgetall(key)
      else if (type === 'string') out[key] = await redis.get(key)
      else if (type === 'zset') out[key] = await redis.zrange(key, '0', '-1', 'WITHSCORES')
      else out[key] = type
    }
  } while (cursor !== '0')
  return out
}

t.test('bad input is refused with a clear 4xx and counts nothing', async (t) => {
  // No flusher: the snapshot compares every key, and a flush would legitimately change the dirty sets.
  const h = await buildTestApp(t, { quota: { flush: false } })
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(() => closeRedis(redis))
  const u = h.user()
  const a = h.admin()
  const status = async () => (await h.app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })).json()

  // Some state to protect: a bit of every metric, an idempotency key.
  const spend = (payload: object) => h.app.inject({ method: 'POST', url: CONSUME, headers: u.headers, payload })
  t.equal((await spend({ metrics: { deployments: 2, api_calls: 7, compute_hours: 1.5 }, idempotency_key: 'setup' })).statusCode, 200)
  t.equal((await h.app.inject({ method: 'POST', url: INCREMENT, headers: u.headers, payload: { metric: 'storage', amount: 2.25 } })).statusCode, 200)
  const statusBefore = await status()
  const limitsBefore = (await h.app.inject({ method: 'GET', url: '/api/usage/admin/limits', headers: a.headers })).json()
  const before = await snapshot(redis, h.prefix)
  t.ok(Object.keys(before).length >= 3, 'the snapshot sees the counters')

  const check = async (t: Test, c: Case) => {
    const headers: Record<string, string> = { ...(c.admin ? a.headers : u.headers) }
    if (c.contentType !== null) headers['content-type'] = c.contentType ?? 'application/json'
    const res = await h.app.inject({ method: c.method ?? 'POST', url: c.url, headers, ...(c.body === undefined ? {} : { payload: c.body }) })
    t.equal(res.statusCode, c.status, 'status')
    let body: { detail?: { error?: unknown; message?: unknown; field?: unknown } }
    try {
      body = res.json()
    } catch {
      t.fail(`not JSON: ${res.body.slice(0, 200)}`)
      return
    }
    t.type(body.detail?.error, 'string', 'detail.error')
    t.type(body.detail?.message, 'string', 'detail.message')
    if (c.error) t.equal(body.detail?.error, c.error, 'error title')
    else if (c.status === 400) t.equal(body.detail?.error, 'Invalid request', 'error title')
    t.match(body.detail?.message, c.names, `message: ${String(body.detail?.message)}`)
    if (c.field !== undefined) t.equal(body.detail?.field, c.field, 'detail.field')
  }

  for (const c of catalogue(u.id)) {
    await t.test(c.name, (t) => check(t, c))
  }

  t.same(await snapshot(redis, h.prefix), before, 'not one Redis key under the prefix changed')
  t.same(await status(), statusBefore, 'status unchanged')
  t.same((await h.app.inject({ method: 'GET', url: '/api/usage/admin/limits', headers: a.headers })).json(), limitsBefore, 'limits unchanged')
  const tier = await h.db.pool.query('SELECT tier FROM users WHERE id = $1', [u.id])
  t.equal(tier.rows[0]?.tier, 'free', 'tier unchanged')
})

t.test('JSON content types: parsed and validated alike, or refused', async (t) => {
  const h = await buildTestApp(t, { quota: { flush: false } })
  const u = h.user()
  const current = async () => (await h.app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })).json().metrics.api_calls.current as number
  let expected = 0
  for (const contentType of [
    'application/json', 'application/JSON', 'Application/Json', 'application/json; charset=utf-8',
    'application/json; charset=UTF-8', 'application/json;', 'application/json ; charset=utf-8',
  ]) {
    await t.test(contentType, async (t) => {
      const headers = { ...u.headers, 'content-type': contentType }
      // bad input stays bad input whatever the spelling of the type
      const bad = await h.app.inject({ method: 'POST', url: CONSUME, headers, payload: '{"metric": "api_calls", "amount": "5"}' })
      t.equal(bad.statusCode, 400)
      t.equal(bad.json().detail.field, 'amount')
      const extra = await h.app.inject({ method: 'POST', url: CONSUME, headers, payload: '{"metric": "api_calls", "amount": 5, "x": 1}' })
      t.equal(extra.statusCode, 400)
      const poisoned = await h.app.inject({ method: 'POST', url: CONSUME, headers, payload: '{"metric": "api_calls", "__proto__": {"amount": 5}}' })
      t.equal(poisoned.statusCode, 400)
      t.equal(await current(), expected, 'nothing counted by the refusals')
      // good input is accepted
      const good = await h.app.inject({ method: 'POST', url: CONSUME, headers, payload: '{"metric": "api_calls", "amount": 5}' })
      t.equal(good.statusCode, 200)
      expected += 5
      t.equal(await current(), expected)
    })
  }
  for (const contentType of ['text/json', 'application/json-patch+json', 'application/jsonp', 'json', 'multipart/form-data; boundary=x']) {
    await t.test(`${contentType}: 415`, async (t) => {
      const res = await h.app.inject({ method: 'POST', url: CONSUME, headers: { ...u.headers, 'content-type': contentType }, payload: '{"metric": "api_calls", "amount": 5}' })
      t.equal(res.statusCode, 415)
      t.equal(res.json().detail.error, 'Unsupported media type')
      t.equal(await current(), expected)
    })
  }
})

t.test('a mixed-case UUID in the token sub is the same user as its lower case', async (t) => {
  const h = await buildTestApp(t)
  const id = '6F9619FF-8B86-4D01-B42D-00C04FC964FF'
  const upper = h.user({ sub: id })
  const lower = h.user({ sub: id.toLowerCase() })
  const mixed = h.user({ sub: '6f9619ff-8B86-4d01-B42D-00c04fc964ff' })
  t.equal((await h.app.inject({ method: 'POST', url: '/api/deploy', headers: upper.headers })).statusCode, 201)
  t.equal((await h.app.inject({ method: 'POST', url: '/api/deploy', headers: mixed.headers })).statusCode, 201)
  const status = (await h.app.inject({ method: 'GET', url: '/api/usage/status', headers: lower.headers })).json()
  t.equal(status.user_id, id.toLowerCase(), 'user_id is lower case')
  t.equal(status.metrics.deployments.current, 2, 'one counter for all spellings')
  const rows = await h.db.pool.query('SELECT id::text FROM users WHERE id = $1', [id.toLowerCase()])
  t.equal(rows.rowCount, 1, 'one users row')
  // an admin may name the user in any case too
  const admin = h.admin()
  const viaAdmin = await h.app.inject({ method: 'GET', url: `/api/usage/admin/users/${id}/status`, headers: admin.headers })
  t.equal(viaAdmin.statusCode, 200)
  t.equal(viaAdmin.json().user_id, id.toLowerCase())
  t.equal(viaAdmin.json().metrics.deployments.current, 2)
})

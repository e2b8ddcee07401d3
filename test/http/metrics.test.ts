/**
 * GET /metrics: every metric name the contract pins is exposed, and the values move with traffic
 * (decisions by outcome, their latency, flushed rows, dirty user-days, HTTP requests by route
 * pattern); no label carries a user id; each app has its own registry.
 */
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'

/** Parses the text format into `name{labels}` -> value. */
function parse(text: string): Map<string, number> {
  const values = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    values.set(line.slice(0, at), Number(line.slice(at + 1)))
  }
  return values
}

const PINNED = [
  'quota_decisions_total', 'quota_decision_duration_seconds', 'quota_flush_rows_total', 'quota_flush_lag_seconds',
  'quota_dirty_user_days', 'quota_fail_open_total', 'quota_leader',
  'quota_deny_cache_hits_total', 'quota_batch_size', 'quota_redis_command_timeouts_total',
  'quota_http_requests_total', 'quota_http_request_duration_seconds', 'process_cpu_user_seconds_total',
]

t.test('/metrics shows every pinned name, and the values move with deploys', async (t) => {
  const { app, user, admin } = await buildTestApp(t, { quota: { flushIntervalMs: 60_000 } })
  const scrape = async () => {
    const res = await app.inject({ url: '/metrics' })
    t.equal(res.statusCode, 200)
    t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
    return res.body
  }

  const before = await scrape()
  for (const name of PINNED) t.match(before, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is exposed`)
  const b = parse(before)
  t.equal(b.get('quota_decisions_total{metric="deployments",outcome="allowed"}'), 0, 'label children bound up front')
  t.equal(b.get('quota_leader'), 0, 'not the leader: the scheduler is off in tests')

  // The free tier allows 10 deployments a day: 12 deploys = 10 allowed, 2 denied (the second from the deny cache).
  const alice = user()
  for (let i = 0; i < 12; i++) {
    const res = await app.inject({ method: 'POST', url: '/api/deploy', headers: alice.headers, payload: {} })
    t.equal(res.statusCode, i < 10 ? 201 : 429)
  }
  await app.inject({ method: 'GET', url: `/api/usage/admin/users/${alice.id}/status`, headers: admin().headers })

  const middle = parse(await scrape())
  t.equal(middle.get('quota_decisions_total{metric="deployments",outcome="allowed"}'), 10)
  t.equal(middle.get('quota_decisions_total{metric="deployments",outcome="denied"}'), 2)
  t.equal(middle.get('quota_deny_cache_hits_total{metric="deployments"}'), 1, 'the repeated denial came from memory')
  t.equal(middle.get('quota_decision_duration_seconds_count'), 11, 'one observation per store call')
  t.ok((middle.get('quota_decision_duration_seconds_sum') ?? 0) > 0)
  t.ok((middle.get('quota_batch_size_count') ?? 0) >= 11, 'every decide call counted')
  t.equal(middle.get('quota_dirty_user_days'), 1, 'alice today, not yet flushed')
  t.ok((middle.get('quota_flush_lag_seconds') ?? -1) >= 0)
  t.equal(middle.get('quota_flush_rows_total'), 0)
  t.equal(middle.get('quota_http_requests_total{method="POST",route="/api/deploy",status="201"}'), 10)
  t.equal(middle.get('quota_http_requests_total{method="POST",route="/api/deploy",status="429"}'), 2)
  t.equal(middle.get('quota_http_requests_total{method="GET",route="/api/usage/admin/users/:id/status",status="200"}'), 1,
    'the route pattern, never the URL')

  await app.quota.flusher.flushAll()
  const after = await scrape()
  const a = parse(after)
  t.equal(a.get('quota_flush_rows_total'), 1, 'one user-day written')
  t.equal(a.get('quota_dirty_user_days'), 0)
  t.equal(a.get('quota_flush_lag_seconds'), 0)
  t.notMatch(after, alice.id, 'no user id anywhere')
})

t.test('each app has its own registry', async (t) => {
  const one = await buildTestApp(t)
  const two = await buildTestApp(t)
  const alice = one.user()
  await one.app.inject({ method: 'POST', url: '/api/deploy', headers: alice.headers, payload: {} })
  const first = parse((await one.app.inject({ url: '/metrics' })).body)
  const second = parse((await two.app.inject({ url: '/metrics' })).body)
  t.equal(first.get('quota_decisions_total{metric="deployments",outcome="allowed"}'), 1)
  t.equal(second.get('quota_decisions_total{metric="deployments",outcome="allowed"}'), 0)
})

t.test('fail-open and errors are counted', async (t) => {
  const { app, user } = await buildTestApp(t, { env: { USAGE_FAIL_MODE: 'open' } })
  // A store that cannot answer: the decision errors, and open mode admits it.
  app.quota.store.decide = async () => {
    const { CounterUnavailableError } = await import('../../src/counters/store.ts')
    throw new CounterUnavailableError('redis unavailable: test')
  }
  const res = await app.inject({ method: 'POST', url: '/api/deploy', headers: user().headers, payload: {} })
  t.equal(res.statusCode, 201)
  const m = parse((await app.inject({ url: '/metrics' })).body)
  t.equal(m.get('quota_decisions_total{metric="deployments",outcome="error"}'), 1)
  t.equal(m.get('quota_fail_open_total'), 1)
})

/**
 * Issue 11, finding 3, over HTTP: a user holding as many idempotency keys as
 * IDEMPOTENCY_KEYS_PER_USER allows gets a 429 envelope ("Too many idempotency keys", with
 * Retry-After: when the oldest key expires) for a new key, and nothing is counted; replays of held
 * keys and calls without a key still work.
 */
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'

t.test('with a bound of 5, the 6th new key is a 429; replays and calls without a key still work', async (t) => {
  const h = await buildTestApp(t, { quota: { idempotencyKeysPerUser: 5 } })
  const u = h.user()
  const post = (url: string, payload: object) => h.app.inject({ method: 'POST', url, headers: u.headers, payload })
  const current = async (): Promise<number> =>
    (await h.app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })).json().metrics.api_calls.current as number

  const firsts = []
  for (let i = 1; i <= 3; i++) firsts.push(await post('/api/usage/consume', { metric: 'api_calls', amount: 1, idempotency_key: `job-${i}` }))
  firsts.push(await post('/api/usage/increment', { metric: 'api_calls', amount: 1, idempotency_key: 'job-4' }))
  firsts.push(await post('/api/usage/consume', { metric: 'deployments', amount: 11, idempotency_key: 'job-5' }))
  t.same(firsts.map((r) => r.statusCode), [200, 200, 200, 200, 429], 'five keys stored (the denial too)')

  for (const [url, metric] of [['/api/usage/consume', 'api_calls'], ['/api/usage/increment', 'api_calls']] as const) {
    const sixth = await post(url, { metric, amount: 1, idempotency_key: 'job-6' })
    t.equal(sixth.statusCode, 429, `${url}: the 6th new key`)
    t.same(sixth.json(), {
      detail: { error: 'Too many idempotency keys', message: sixth.json().detail.message, field: 'idempotency_key' },
    }, 'the error envelope')
    t.match(sixth.json().detail.message, /idempotency keys/)
    const retry = Number(sixth.headers['retry-after'])
    t.ok(retry > 86_000 && retry <= 86_400, `Retry-After: when the oldest key expires (${retry} s)`)
  }
  t.equal(await current(), 4, 'the refused calls counted nothing')

  for (const [i, first] of firsts.entries()) {
    const url = i === 3 ? '/api/usage/increment' : '/api/usage/consume'
    const payload = i === 4 ? { metric: 'deployments', amount: 11, idempotency_key: 'job-5' } : { metric: 'api_calls', amount: 1, idempotency_key: `job-${i + 1}` }
    const again = await post(url, payload)
    t.equal(again.statusCode, first.statusCode, `replay of job-${i + 1}`)
    t.equal(again.headers['idempotent-replayed'], 'true')
  }
  t.equal((await post('/api/usage/consume', { metric: 'api_calls', amount: 1 })).statusCode, 200, 'a call without a key')
  t.equal(await current(), 5)
  const other = h.user()
  const theirs = await h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: other.headers, payload: { metric: 'api_calls', idempotency_key: 'job-6' } })
  t.equal(theirs.statusCode, 200, 'another user has room of their own')
})

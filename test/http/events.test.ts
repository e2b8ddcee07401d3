/**
 * Threshold events end to end (DESIGN.md 1.11, docs/events.md) through HTTP, on Redis and Postgres:
 * consuming to 80 % and 100 % of a daily limit raises exactly one event each, the flusher records
 * them, the webhook worker delivers them signed, and GET /api/usage/admin/events lists them with
 * their delivery state (admin only, paged, bad query strings refused). A reset, a tier change and
 * a limit edit through the API re-arm that day's events; an unlimited metric raises none.
 */
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'
import { startReceiver } from '../helpers/webhook-receiver.ts'

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

type Headers = Record<string, string>

function client(h: TestApp) {
  const admin = h.admin().headers
  return {
    admin,
    /** One consume, 1 ms after the last: crossings of separate calls have separate times (ids follow them). */
    consume: async (headers: Headers, metric: string, amount: number) => {
      h.clock.advance(1)
      return (await h.app.inject({ method: 'POST', url: '/api/usage/consume', headers, payload: { metric, amount } })).statusCode
    },
    events: async (query = '', headers: Headers = admin) => h.app.inject({ method: 'GET', url: `/api/usage/admin/events${query}`, headers }),
    /** The events of `userId`, after a flush. */
    of: async (userId: string) => {
      await h.app.quota.flusher.flushAll()
      const res = await h.app.inject({ method: 'GET', url: '/api/usage/admin/events?limit=1000', headers: admin })
      return (res.json().events as Array<Record<string, unknown>>).filter((e) => e.user_id === userId)
    },
  }
}

t.test('80 % and 100 % raise one event each; recorded, delivered signed, listed with their state', async (t) => {
  const secret = randomBytes(32).toString('base64url')
  const receiver = await startReceiver(secret)
  t.teardown(() => receiver.close())
  const h = await buildTestApp(t, { quota: { webhook: { url: receiver.url, secret, pollMs: 20 } } })
  // The signature's t comes from the service clock; the receiver's tolerance is against real time.
  h.clock.set(Date.now())
  const c = client(h)
  const u = h.user()
  t.equal(await c.consume(u.headers, 'deployments', 7), 200)
  t.same(await c.of(u.id), [], '70 %: nothing')
  t.equal(await c.consume(u.headers, 'deployments', 1), 200)
  t.equal(await c.consume(u.headers, 'deployments', 1), 200, '90 %: no second 80 event')
  t.equal(await c.consume(u.headers, 'deployments', 1), 200)
  t.equal(await c.consume(u.headers, 'deployments', 1), 429, 'denied: changes nothing')
  t.equal(await c.consume(u.headers, 'compute_hours', 7.9), 200)
  t.equal(await c.consume(u.headers, 'compute_hours', 0.1), 200, 'exactly 8 of 10 hours')
  const events = await c.of(u.id)
  t.match(events, [
    { type: 'usage.threshold', metric: 'deployments', threshold: 80, current: 8, limit: 10 },
    { metric: 'deployments', threshold: 100, current: 10, limit: 10 },
    { metric: 'compute_hours', threshold: 80, current: 8, limit: 10 },
  ])
  t.equal(events.length, 3, 'exactly one per metric and threshold')
  await h.app.quota.flusher.flushAll()
  t.equal((await c.of(u.id)).length, 3, 'a second flush records nothing more')

  await waitFor('all three delivered', () => receiver.events.size === 3)
  for (const e of events) {
    const got = receiver.events.get(e.id as number)
    t.same(got, {
      id: e.id, type: 'usage.threshold', user_id: u.id, metric: e.metric, date: e.date, threshold: e.threshold,
      current: e.current, limit: e.limit, created_at: e.created_at,
    }, `event ${String(e.id)} delivered with the contract body`)
  }
  await waitFor('listed as delivered', async () => (await c.of(u.id)).every((e) => e.delivery === 'delivered'))
  t.match((await c.of(u.id))[0], { attempts: 1, last_error: null, gave_up_at: null, delivered_at: String })
  const metrics = (await h.app.inject({ url: '/metrics' })).body
  t.match(metrics, /quota_events_total\{threshold="80"\} 2/)
  t.match(metrics, /quota_events_total\{threshold="100"\} 1/)
  t.match(metrics, /quota_webhook_deliveries_total\{outcome="delivered"\} 3/)

  const enterprise = h.user()
  t.equal(await c.consume(enterprise.headers, 'api_calls', 1), 200)
  await h.app.inject({ method: 'PUT', url: `/api/usage/admin/users/${enterprise.id}/tier`, headers: c.admin, payload: { tier: 'enterprise' } })
  t.equal(await c.consume(enterprise.headers, 'api_calls', 1e9), 200)
  t.same(await c.of(enterprise.id), [], 'an unlimited metric raises no event')
})

t.test('GET /api/usage/admin/events: admin only, oldest first, paged by after, bad query strings refused', async (t) => {
  const h = await buildTestApp(t)
  const c = client(h)
  const u = h.user()
  for (const metric of ['deployments', 'api_calls', 'compute_hours']) {
    t.equal(await c.consume(u.headers, metric, metric === 'api_calls' ? 5000 : 10), 200)
  }
  await h.app.quota.flusher.flushAll()
  const all = (await c.events()).json()
  t.equal(all.events.length, 6, 'two per metric')
  const ids = all.events.map((e: { id: number }) => e.id)
  t.same(ids, [...ids].sort((a: number, b: number) => a - b), 'oldest first')
  t.equal(all.next_after, ids.at(-1))
  const page1 = (await c.events('?limit=4')).json()
  t.same(page1.events.map((e: { id: number }) => e.id), ids.slice(0, 4))
  const page2 = (await c.events(`?after=${page1.next_after}&limit=4`)).json()
  t.same(page2.events.map((e: { id: number }) => e.id), ids.slice(4))
  const empty = (await c.events(`?after=${page2.next_after}`)).json()
  t.same(empty, { events: [], next_after: page2.next_after }, 'nothing newer: next_after stays')
  t.match(all.events[0], { delivery: 'pending', attempts: 0, delivered_at: null, rearmed_at: null }, 'no WEBHOOK_URL: recorded, pending')

  t.equal((await c.events('', {})).statusCode, 401)
  t.equal((await c.events('', u.headers)).statusCode, 403)
  for (const query of ['?after=-1', '?after=abc', '?after=99999999999999999', '?limit=0', '?limit=1001', '?limit=1.5', '?extra=1']) {
    const res = await c.events(query)
    t.equal(res.statusCode, 400, `${query}: 400`)
    t.match(res.json(), { detail: { error: String, message: String } })
  }
})

t.test('re-armed by a reset, a tier change and a limit edit through the API', async (t) => {
  const h = await buildTestApp(t)
  const c = client(h)
  const trail = async (action: string) => (await h.db.pool.query(
    'SELECT detail FROM admin_audit WHERE action = $1 ORDER BY id DESC LIMIT 1', [action])).rows[0]?.detail

  // A reset of one user and one metric: that metric's events of the day end; the next crossing is new.
  const a = h.user()
  t.equal(await c.consume(a.headers, 'deployments', 10), 200)
  t.equal(await c.consume(a.headers, 'api_calls', 4000), 200)
  t.equal((await c.of(a.id)).length, 3)
  h.clock.advance(1000)
  const reset = await h.app.inject({ method: 'POST', url: '/api/usage/admin/manual-reset', headers: c.admin, payload: { user_id: a.id, metric: 'deployments' } })
  t.equal(reset.statusCode, 200)
  t.match(await trail('manual-reset'), { events_rearmed: 2 })
  let events = await c.of(a.id)
  // One consume of 10 crossed both thresholds in one decision: compared without their order.
  t.same(events.map((e) => [e.metric, e.threshold, e.rearmed_at !== null]).sort(),
    [['api_calls', 80, false], ['deployments', 100, true], ['deployments', 80, true]], 'deployments re-armed, api_calls not')
  h.clock.advance(1000)
  t.equal(await c.consume(a.headers, 'deployments', 8), 200)
  t.equal(await c.consume(a.headers, 'api_calls', 100), 200)
  events = await c.of(a.id)
  t.same(events.map((e) => [e.metric, e.threshold, e.current]).slice(3), [['deployments', 80, 8]], 'crossing again after the reset: a new event')
  t.equal(events.length, 4, 'api_calls still at one live 80 event')

  // Everyone's reset re-arms every user's day.
  const b = h.user()
  t.equal(await c.consume(b.headers, 'compute_hours', 9), 200)
  t.equal((await c.of(b.id)).length, 1)
  h.clock.advance(1000)
  t.equal((await h.app.inject({ method: 'POST', url: '/api/usage/admin/manual-reset', headers: c.admin })).statusCode, 200)
  t.ok((await c.of(b.id)).every((e) => e.rearmed_at !== null), 'b re-armed')
  t.ok((await c.of(a.id)).every((e) => e.rearmed_at !== null), 'a re-armed')

  // A tier change: that user's events of today end; the new limit's crossings are new events.
  const d = h.user()
  t.equal(await c.consume(d.headers, 'deployments', 8), 200)
  t.equal((await c.of(d.id)).length, 1)
  h.clock.advance(1000)
  const tier = await h.app.inject({ method: 'PUT', url: `/api/usage/admin/users/${d.id}/tier`, headers: c.admin, payload: { tier: 'pro' } })
  t.equal(tier.statusCode, 200)
  t.match(await trail('set-tier'), { events_rearmed: 1 })
  t.equal((await c.of(d.id))[0]?.rearmed_at === null, false, 're-armed by the tier change')
  h.clock.advance(1000)
  // The store re-arms its own bit once a decision finds the metric under 80 % of the new limit.
  t.equal(await c.consume(d.headers, 'deployments', 1), 200)
  t.equal(await c.consume(d.headers, 'deployments', 31), 200)
  t.match((await c.of(d.id)).slice(1), [{ metric: 'deployments', threshold: 80, current: 40, limit: 50, rearmed_at: null }])

  // A limit edit: the named metric's events of every user of the tier end, the others stay.
  const e = h.user()
  t.equal(await c.consume(e.headers, 'compute_hours', 8), 200)
  t.equal(await c.consume(e.headers, 'deployments', 8), 200)
  t.equal((await c.of(e.id)).length, 2)
  h.clock.advance(1000)
  const edit = await h.app.inject({ method: 'PUT', url: '/api/usage/admin/limits/free', headers: c.admin, payload: { max_compute_hours_per_day: 20 } })
  t.equal(edit.statusCode, 200)
  t.teardown(() => h.app.inject({ method: 'PUT', url: '/api/usage/admin/limits/free', headers: c.admin, payload: { max_compute_hours_per_day: 10 } }))
  t.match(await trail('update-limits'), { events_rearmed: 1 })
  t.same((await c.of(e.id)).map((x) => [x.metric, x.rearmed_at !== null]), [['compute_hours', true], ['deployments', false]])
  h.clock.advance(1000)
  t.equal(await c.consume(e.headers, 'compute_hours', 1), 200)
  t.equal(await c.consume(e.headers, 'compute_hours', 7), 200)
  t.match((await c.of(e.id)).slice(2), [{ metric: 'compute_hours', threshold: 80, current: 16, limit: 20 }], '80 % of the new limit')
})

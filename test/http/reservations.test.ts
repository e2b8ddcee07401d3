/**
 * Reservations over HTTP (DESIGN 1.8, 1.9, invariant 10): a hold counts against the limit while
 * it lasts, a commit records the actual amount (more than held too, and says so), a cancel records
 * nothing, a lapsed hold frees itself, only the holder settles, and holds never reach daily_usage.
 */
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'

const RESERVE = '/api/usage/reservations'

function client(h: TestApp, headers: Record<string, string>) {
  return {
    post: (url: string, payload: object) => h.app.inject({ method: 'POST', url, headers, payload }),
    del: (url: string) => h.app.inject({ method: 'DELETE', url, headers }),
    async status(metric: string): Promise<{ current: number; remaining: number | null; reserved: number }> {
      const res = await h.app.inject({ method: 'GET', url: '/api/usage/status', headers })
      return res.json().metrics[metric]
    },
  }
}

t.test('reserve, consume against the hold, commit less, commit again, conflicts', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const { post, del, status } = client(h, u.headers)

  const reserved = await post(RESERVE, { metric: 'compute_hours', amount: 6, ttl_seconds: 600 })
  t.equal(reserved.statusCode, 201)
  const hold = reserved.json()
  t.match(hold, {
    reservation_id: /^r20261128c[A-Za-z0-9_-]{22}$/, metric: 'compute_hours', amount: 6, expires_at: '2026-11-28T12:10:00.000Z',
    current: 0, limit: 10, remaining: 4, reserved: 6, tier: 'free', date: '2026-11-28',
  })
  t.match(await status('compute_hours'), { current: 0, reserved: 6, remaining: 4 }, 'status shows what is held')

  const over = await post('/api/usage/consume', { metric: 'compute_hours', amount: 5 })
  t.equal(over.statusCode, 429, 'used 0 + held 6 + 5 > 10')
  t.match(over.json(), { detail: { error: 'Usage limit exceeded', metric: 'compute_hours' } })
  t.equal((await post('/api/usage/consume', { metric: 'compute_hours', amount: 4 })).statusCode, 200)
  const noRoom = await post(RESERVE, { metric: 'compute_hours', amount: 0.5 })
  t.equal(noRoom.statusCode, 429, 'a reservation past the limit is the 429 of consume')
  t.match(noRoom.json(), { detail: { current: 4, limit: 10, remaining: 0 } }, 'remaining counts what is held')
  t.ok(noRoom.headers['retry-after'], 'with Retry-After')

  const commit = await post(`${RESERVE}/${hold.reservation_id}/commit`, { amount: 2.5 })
  t.equal(commit.statusCode, 200)
  t.match(commit.json(), { reservation_id: hold.reservation_id, held: 6, amount: 2.5, exceeded_hold: false, current: 6.5, reserved: 0, remaining: 3.5 })
  const again = await post(`${RESERVE}/${hold.reservation_id}/commit`, { amount: 9 })
  t.equal(again.statusCode, 200)
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.same(again.json(), commit.json(), 'a second commit replays the first answer')
  t.match(await status('compute_hours'), { current: 6.5, reserved: 0 }, 'recorded once')

  const cancel = await del(`${RESERVE}/${hold.reservation_id}`)
  t.equal(cancel.statusCode, 409, 'a committed reservation cannot be cancelled')
  t.match(cancel.json(), { detail: { error: 'Reservation settled' } })

  const other = client(h, h.user().headers)
  t.equal((await other.post(`${RESERVE}/${hold.reservation_id}/commit`, { amount: 1 })).statusCode, 404, "another user's reservation: 404")
  t.equal((await other.del(`${RESERVE}/${hold.reservation_id}`)).statusCode, 404)
  t.equal((await del(`${RESERVE}/r20261128cAAAAAAAAAAAAAAAAAAAAAA`)).statusCode, 404, 'unknown id: 404')
  const malformed = await del(`${RESERVE}/not-a-reservation`)
  t.equal(malformed.statusCode, 404)
  t.match(malformed.json(), { detail: { error: 'Reservation not found', reservation_id: 'not-a-reservation' } })
})

t.test('commit more than held is recorded and said; cancel records nothing', async (t) => {
  const h = await buildTestApp(t)
  const { post, del, status } = client(h, h.user().headers)
  const small = (await post(RESERVE, { metric: 'deployments', amount: 2 })).json()
  const commit = await post(`${RESERVE}/${small.reservation_id}/commit`, { amount: 3 })
  t.match(commit.json(), { held: 2, amount: 3, exceeded_hold: true, current: 3 })

  const zero = (await post(RESERVE, { metric: 'deployments', amount: 1 })).json()
  t.match((await post(`${RESERVE}/${zero.reservation_id}/commit`, { amount: 0 })).json(), { amount: 0, current: 3 }, 'a job that used nothing commits 0')

  const dropped = (await post(RESERVE, { metric: 'api_calls', amount: 100 })).json()
  const cancel = await del(`${RESERVE}/${dropped.reservation_id}`)
  t.equal(cancel.statusCode, 200)
  t.match(cancel.json(), { reservation_id: dropped.reservation_id, released: 100, current: 0, reserved: 0, remaining: 5000 })
  t.equal((await del(`${RESERVE}/${dropped.reservation_id}`)).headers['idempotent-replayed'], 'true', 'a second cancel replays')
  t.equal((await post(`${RESERVE}/${dropped.reservation_id}/commit`, { amount: 1 })).statusCode, 409, 'a cancelled one cannot be committed')
  t.match(await status('api_calls'), { current: 0, reserved: 0 })

  const [x, y] = [(await post(RESERVE, { metric: 'api_calls', amount: 10 })).json(), (await post(RESERVE, { metric: 'api_calls', amount: 20 })).json()]
  const settled = await post(`${RESERVE}/${x.reservation_id}/commit`, { amount: 10 })
  t.match(settled.json(), { reserved: 20, remaining: 4970 })
  await del(`${RESERVE}/${y.reservation_id}`)
  t.same((await post(`${RESERVE}/${x.reservation_id}/commit`, { amount: 10 })).json(), settled.json(),
    "a repeat is the first answer byte for byte, though other holds changed since")

  const all = (await post(RESERVE, { metric: 'compute_hours', amount: 10 })).json()
  t.equal((await post('/api/usage/consume', { metric: 'compute_hours', amount: 1 })).statusCode, 429, 'everything held')
  await del(`${RESERVE}/${all.reservation_id}`)
  t.equal((await post('/api/usage/consume', { metric: 'compute_hours', amount: 1 })).statusCode, 200, 'cancelled: room at once (no remembered denial)')
})

t.test('a hold lapses by itself after ttl_seconds (injected clock)', async (t) => {
  const h = await buildTestApp(t)
  const { post, status } = client(h, h.user().headers)
  const hold = (await post(RESERVE, { metric: 'deployments', amount: 10, ttl_seconds: 60 })).json()
  t.equal((await post('/api/usage/consume', { metric: 'deployments' })).statusCode, 429, 'held: nothing left')
  h.clock.advance(59_999)
  t.match(await status('deployments'), { reserved: 10 })
  h.clock.advance(1)
  t.match(await status('deployments'), { reserved: 0, remaining: 10 }, 'lapsed at its expiry, without a sweeper')
  t.equal((await post('/api/usage/consume', { metric: 'deployments' })).statusCode, 200)
  t.equal((await post(`${RESERVE}/${hold.reservation_id}/commit`, { amount: 1 })).statusCode, 404, 'a lapsed reservation is gone')
})

t.test('idempotent reserve, bad input, and holds never reach daily_usage', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  const { post } = client(h, u.headers)
  const body = { metric: 'compute_hours', amount: 1.25, idempotency_key: 'job-7' }
  const first = await post(RESERVE, body)
  const again = await post(RESERVE, body)
  t.equal(again.statusCode, 201)
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.equal(again.json().reservation_id, first.json().reservation_id, 'the same reservation')
  t.equal((await post(RESERVE, { ...body, amount: 2 })).statusCode, 422, 'the key with other parameters')

  for (const [payload, field] of [
    [{ metric: 'storage', amount: 1 }, 'metric'],
    [{ metric: 'compute_hours', amount: 0 }, 'amount'],
    [{ metric: 'compute_hours', amount: 1, ttl_seconds: 0 }, 'ttl_seconds'],
    [{ metric: 'compute_hours', amount: 1, ttl_seconds: 86_401 }, 'ttl_seconds'],
    [{ metric: 'compute_hours', amount: 1, extra: true }, 'extra'],
    [{ metric: 'compute_hours', amount: 1.0000001 }, 'amount'],
  ] as const) {
    const res = await post(RESERVE, payload)
    t.equal(res.statusCode, 400, `${JSON.stringify(payload)}: 400`)
    t.match(res.body, field, `names ${field}`)
  }
  t.equal((await post(`${RESERVE}/${first.json().reservation_id}/commit`, { amount: -1 })).statusCode, 400)

  const open = (await post(RESERVE, { metric: 'deployments', amount: 3 })).json()
  t.ok(open.reservation_id)
  await post('/api/usage/consume', { metric: 'api_calls', amount: 7 })
  await h.app.quota.flusher.flushAll()
  const rows = await h.db.pool.query('SELECT deployments_created, api_calls, compute_hours::float8 AS ch FROM daily_usage WHERE user_id = $1', [u.id])
  t.same(rows.rows, [{ deployments_created: 0, api_calls: 7, ch: 0 }], 'only usage is recorded: open holds are not')
})

t.test('200 concurrent reservations at the boundary: exactly as many holds as fit', async (t) => {
  // A loaded CI machine may take longer than 250 ms for a burst: the test is about exactness.
  const h = await buildTestApp(t, { env: { REDIS_COMMAND_TIMEOUT_MS: '3000' } })
  const { post, status } = client(h, h.user().headers)
  const answers = await Promise.all(Array.from({ length: 200 }, () => post(RESERVE, { metric: 'compute_hours', amount: 0.1 })))
  const granted = answers.filter((a) => a.statusCode === 201).map((a) => a.json().reservation_id as string)
  t.equal(granted.length, 100, '100 holds of 0.1 h fit in 10 h')
  t.equal(answers.filter((a) => a.statusCode === 429).length, 100, 'the rest are 429')
  t.match(await status('compute_hours'), { reserved: 10, remaining: 0 })
  // Half of the jobs used half their estimate: 2.5 h are free again.
  await Promise.all(granted.slice(0, 50).map((id) => post(`${RESERVE}/${id}/commit`, { amount: 0.05 })))
  t.match(await status('compute_hours'), { current: 2.5, reserved: 5, remaining: 2.5 })
  const more = await Promise.all(Array.from({ length: 60 }, () => post(RESERVE, { metric: 'compute_hours', amount: 0.05 })))
  t.equal(more.filter((a) => a.statusCode === 201).length, 50, 'exactly the freed room is reserved again')
})

t.test('library API: app.usage.reserve, hold.commit, hold.cancel', async (t) => {
  const h = await buildTestApp(t)
  const u = h.user()
  await h.app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers }) // first sight creates the user
  const { hold, allowed } = await h.app.usage.reserve(u.id, 'compute_hours', 4, { ttlSeconds: 120 })
  t.ok(allowed)
  const second = await h.app.usage.reserve(u.id, 'compute_hours', 4)
  t.ok(second.allowed)
  t.notOk((await h.app.usage.reserve(u.id, 'compute_hours', 4)).allowed, 'two concurrent jobs hold 8 of 10: a third cannot')
  t.match(await hold?.commit(3.5), { held: 4, amount: 3.5, exceededHold: false, state: { current: 3.5, reserved: 4 } })
  t.match(await second.hold?.cancel(), { held: 4, state: { current: 3.5, reserved: 0, remaining: 6.5 } })

  // DESIGN 1.9's form: the answer itself commits or cancels.
  const job = await h.app.usage.reserve(u.id, 'compute_hours', 2)
  t.match(await job.commit(1.5), { held: 2, amount: 1.5, state: { current: 5, reserved: 0 } })
  const refused = await h.app.usage.reserve(u.id, 'compute_hours', 6)
  t.notOk(refused.allowed, '5 used + 6 > 10')
  await t.rejects(refused.commit(1), /denied/, 'a denied reservation has nothing to commit')
  await t.rejects(refused.cancel(), /denied/)
})

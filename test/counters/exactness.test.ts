/**
 * Invariants 2 and 7: amounts are exact fixed-point (ten times 0.1 is 1, a limit of 10 admits
 * exactly 10.000000), bad input is refused before Redis is touched, and the storage gauge never
 * goes below 0 and carries over days.
 */
import t from 'tap'
import { DAY_MS, utcDay } from '../../src/clock.ts'
import { InvalidAmountError } from '../../src/metrics.ts'
import type { MetricName } from '../../src/metrics.ts'
import type { Amounts } from '../../src/usage/types.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { dayRef, hfield, insertUser, keysWithPrefix, todayNoon } from './fixtures.ts'

const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })
const day = utcDay(h.clock.now())

t.test('100 × 0.1 compute hours make exactly 10, and not a micro-unit more fits', async (t) => {
  const user = newUserId()
  await Promise.all(Array.from({ length: 100 }, () => h.service.incrementUsage(user, 'compute_hours', 0.1)))
  const status = await h.service.status(user)
  t.equal(status.metrics.compute_hours.current, 10, 'exactly 10 (a float sum gives 9.99999999999998)')
  t.equal(status.metrics.compute_hours.remaining, 0)
  t.equal(await hfield(h.redis, dayRef(h.store, user, day), 'c'), 10_000_000)

  const over = await h.service.consume(user, { compute_hours: 0.000001 })
  t.equal(over.allowed, false, 'one micro-unit over the limit is denied')
  t.equal(over.deniedMetric, 'compute_hours')
  t.equal(over.metrics.compute_hours?.current, 10)
  t.equal(await hfield(h.redis, dayRef(h.store, user, day), 'c'), 10_000_000, 'the denial changed nothing')

  await h.flusher.flushAll()
  const { rows } = await h.db.pool.query<{ exact: boolean; text: string }>(
    'SELECT compute_hours = 10 AS exact, compute_hours::text AS text FROM daily_usage WHERE user_id = $1 AND date = $2',
    [user, day],
  )
  t.equal(rows[0]?.exact, true, `daily_usage holds exactly 10 (${rows[0]?.text})`)
})

t.test('checkLimit admits exactly up to the limit', async (t) => {
  const user = newUserId()
  for (let i = 0; i < 10; i++) await h.service.incrementUsage(user, 'compute_hours', 0.1)
  const atLimit = await h.service.checkLimit(user, 'compute_hours', 9.0)
  t.match(atLimit, { allowed: true, reason: null, current: 1, limit: 10, remaining: 9, amount: 9, tier: 'free' })
  const over = await h.service.checkLimit(user, 'compute_hours', 9.000001)
  t.match(over, { allowed: false, reason: 'Daily compute_hours limit exceeded', current: 1, limit: 10 })
  t.equal((await h.service.status(user)).metrics.compute_hours.current, 1, 'checks changed nothing')
  t.equal(await hfield(h.redis, dayRef(h.store, user, day), 'v'), 10, 'checks did not bump the version')
})

t.test('bad amounts are refused with InvalidAmountError before Redis is touched', async (t) => {
  // Its own key prefix: afterwards, not a single key may exist under it.
  const fresh = await createUsageHarness(t, { db: h.db, now: todayNoon(), commandTimeoutMs: 5000 })
  const user = newUserId()
  const s = fresh.service
  const bad: [string, () => Promise<unknown>][] = [
    ['7 decimals', () => s.consume(user, { compute_hours: 0.1234567 })],
    ['7 decimals (increment)', () => s.incrementUsage(user, 'storage', 1.0000001)],
    ['7 decimals (check)', () => s.checkLimit(user, 'compute_hours', 0.0000001)],
    ['NaN', () => s.consume(user, { compute_hours: Number.NaN })],
    ['Infinity', () => s.incrementUsage(user, 'compute_hours', Number.POSITIVE_INFINITY)],
    ['-Infinity storage', () => s.incrementUsage(user, 'storage', Number.NEGATIVE_INFINITY)],
    ['0', () => s.consume(user, { deployments: 0 })],
    ['0 (check)', () => s.checkLimit(user, 'api_calls', 0)],
    ['0 (increment)', () => s.incrementUsage(user, 'storage', 0)],
    ['-0', () => s.consume(user, { api_calls: -0 })],
    ['negative consume', () => s.consume(user, { deployments: -1 })],
    ['negative increment of a daily metric', () => s.incrementUsage(user, 'compute_hours', -1)],
    ['negative storage consume', () => s.consume(user, { storage: -1 })],
    ['negative storage check', () => s.checkLimit(user, 'storage', -1)],
    ['> 1e9', () => s.consume(user, { api_calls: 1e9 + 1 })],
    ['> 1e9 decimal', () => s.incrementUsage(user, 'compute_hours', 1_000_000_000.5)],
    ['< -1e9 storage', () => s.incrementUsage(user, 'storage', -1e9 - 1)],
    ['fractional deployments', () => s.consume(user, { deployments: 1.5 })],
    ['fractional api_calls (increment)', () => s.incrementUsage(user, 'api_calls', 0.5)],
    ['string "5"', () => s.consume(user, { deployments: '5' as unknown as number })],
    ['string "5" (increment)', () => s.incrementUsage(user, 'compute_hours', '5' as unknown as number)],
    ['null amount', () => s.consume(user, { deployments: null as unknown as number })],
    ['unknown metric', () => s.consume(user, { bandwidth: 1 } as unknown as Amounts)],
    ['unknown metric (check)', () => s.checkLimit(user, 'bandwidth' as MetricName, 1)],
    ['unknown metric (increment)', () => s.incrementUsage(user, 'bandwidth' as MetricName, 1)],
    ['no metric', () => s.consume(user, {})],
    ['one bad metric among good ones', () => s.consume(user, { deployments: 1, api_calls: 1, compute_hours: 0.1234567 })],
    ['one unknown metric among good ones', () => s.consume(user, { deployments: 1, bogus: 1 } as unknown as Amounts)],
  ]
  for (const [what, call] of bad) await t.rejects(call(), InvalidAmountError, what)
  t.same(await keysWithPrefix(fresh.redis, fresh.prefix), [], 'no Redis key was created')

  // The same user with a good amount does create keys: the check above can see them.
  await s.consume(user, { deployments: 1 })
  t.not((await keysWithPrefix(fresh.redis, fresh.prefix)).length, 0, 'a valid call writes under the prefix')
  t.equal((await s.status(user)).metrics.deployments.current, 1, 'only the valid call counted')
})

t.test('valid edge amounts are accepted', async (t) => {
  const user = newUserId()
  t.equal((await h.service.incrementUsage(user, 'compute_hours', 0.000001)).metrics.compute_hours?.current, 0.000001)
  t.equal((await h.service.incrementUsage(user, 'api_calls', 1e9)).metrics.api_calls?.current, 1e9, '1e9 itself is allowed')
  t.equal((await h.service.incrementUsage(user, 'storage', 123.456789)).metrics.storage?.current, 123.456789)
})

t.test('storage: a gauge that never goes below 0 and carries over days', async (t) => {
  const user = newUserId()
  const start = h.clock.now()
  t.teardown(() => h.clock.set(start))
  t.equal((await h.service.incrementUsage(user, 'storage', 3)).metrics.storage?.current, 3)
  t.equal((await h.service.incrementUsage(user, 'storage', -5)).metrics.storage?.current, 0, '3 - 5 is floored at 0')
  t.equal((await h.service.status(user)).metrics.storage.current, 0)
  t.equal(await hfield(h.redis, dayRef(h.store, user, utcDay(h.clock.now())), 's'), 0, 'the entry holds 0')
  t.equal((await h.service.incrementUsage(user, 'storage', 2.5)).metrics.storage?.current, 2.5, 'and grows again from 0')
  await h.service.consume(user, { deployments: 4, compute_hours: 1.5 })

  const consumed = await h.service.consume(user, { storage: 2.5 })
  t.match(consumed, { allowed: true, resetsAt: null })
  t.equal(consumed.metrics.storage?.current, 5, 'up to the storage limit of 5')
  const over = await h.service.consume(user, { storage: 0.000001 })
  t.match(over, { allowed: false, deniedMetric: 'storage', reason: 'Storage limit exceeded' })

  h.clock.advance(DAY_MS)
  const next = await h.service.status(user)
  t.equal(next.date, utcDay(start + DAY_MS))
  t.equal(next.metrics.storage.current, 5, 'storage carries over to the next day')
  t.equal(next.metrics.deployments.current, 0, 'daily metrics start again at 0')
  t.equal(next.metrics.compute_hours.current, 0)
  t.match(await h.service.consume(user, { storage: 0.000001 }), { allowed: false }, 'and the gauge is still full the next day')
  t.equal((await h.service.incrementUsage(user, 'storage', -1.25)).metrics.storage?.current, 3.75, 'deleting data frees room')
  h.clock.advance(DAY_MS)
  t.equal((await h.service.status(user)).metrics.storage.current, 3.75, 'two days later too')
})

t.test('an unlimited daily count above 2^31 reaches daily_usage and never blocks other users', async (t) => {
  // Enterprise is unlimited and one call may carry up to 1e9: 3 calls make 3e9 api_calls, more
  // than a Postgres int holds. Redis and the answers agree; daily_usage must too, and a row that
  // cannot be written must not hold back everybody else's.
  const fresh = await createUsageHarness(t, { db: h.db, now: todayNoon(), commandTimeoutMs: 5000 })
  const [big, small] = [newUserId(), newUserId()]
  await insertUser(h.db.pool, big, 'enterprise')
  for (let i = 0; i < 3; i++) await fresh.service.consume(big, { api_calls: 1e9 })
  await fresh.service.consume(small, { deployments: 1 })
  t.equal((await fresh.service.status(big)).metrics.api_calls.current, 3e9, 'Redis and the answers say 3e9')

  const flushed = await fresh.flusher.flushAll().then(() => 'ok', (err: Error) => err.message)
  t.equal(flushed, 'ok', 'the flush succeeds')
  const { rows } = await h.db.pool.query<{ user_id: string; api_calls: string; deployments_created: string }>(
    'SELECT user_id::text, api_calls::text, deployments_created::text FROM daily_usage WHERE user_id = ANY($1::uuid[]) ORDER BY user_id',
    [[big, small]],
  )
  const byUser = Object.fromEntries(rows.map((r) => [r.user_id, r]))
  t.equal(byUser[small]?.deployments_created, '1', "another user's row is written")
  t.equal(byUser[big]?.api_calls, '3000000000', 'the big row is written exactly')
})

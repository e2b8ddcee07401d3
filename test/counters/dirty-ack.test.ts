/**
 * The flusher's ack: a flushed user-day leaves the dirty set; one that changed after the read stays,
 * marked dirty since the read (not since its first change), so lagMs() tells the true lag of a
 * user who stays busy.
 */
import t from 'tap'
import { utcDay } from '../../src/clock.ts'
import { bucketOf } from '../../src/counters/keys.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'

t.test('ack removes flushed user-days and re-scores the ones that changed since the read', async (t) => {
  const h = await createUsageHarness(t)
  const [quiet, busy] = [newUserId(), newUserId()]
  await h.service.consume(quiet, { api_calls: 1 })
  await h.service.consume(busy, { api_calls: 1 })
  const firstChange = h.clock.now()

  h.clock.advance(5000)
  const readAt = h.clock.now()
  const entries = await h.store.readDirty(100)
  t.equal(entries.length, 2, 'both user-days are dirty')
  await h.service.consume(busy, { api_calls: 1 }) // changes between the read and the ack

  for (const e of entries) {
    await h.store.ack(e.bucket, [{ userId: e.userId, day: e.day, version: e.values?.v ?? 0 }], readAt)
  }
  const left = await h.store.readDirty(100)
  t.same(left.map((e) => e.userId), [busy], 'only the user that changed since the read stays dirty')
  t.equal(left[0]?.since, readAt, `marked dirty since the read (${readAt}), not since its first change (${firstChange})`)
  t.equal(left[0]?.values?.a, 2_000_000, 'with its newer value still to flush')

  h.clock.advance(1000)
  t.equal(await h.flusher.lagMs(h.clock.now()), 1000, 'lag = now - read time')
})

t.test('a user-day is in the dirty set exactly when its hash carries the mark', async (t) => {
  const h = await createUsageHarness(t)
  const user = newUserId()
  const day = utcDay(h.clock.now())
  const dayKey = h.store.keys.day(user, day)
  const member = `${user}:${day}`
  const dirtyKey = h.store.keys.dirty(bucketOf(user))
  const state = async () => ({
    inSet: (await h.redis.zscore(dirtyKey, member)) !== null,
    marked: (await h.redis.hget(dayKey, 'z')) === '1',
  })

  await h.service.consume(user, { api_calls: 1 })
  t.same(await state(), { inSet: true, marked: true }, 'the first change marks it')
  await h.service.consume(user, { api_calls: 1 })
  t.same(await state(), { inSet: true, marked: true }, 'a second change (no ZADD) keeps it so')

  await h.flusher.flushAll()
  t.same(await state(), { inSet: false, marked: false }, 'the flush takes both away')
  t.equal(await h.service.checkLimit(user, 'api_calls').then((d) => d.current), 2)
  t.same(await state(), { inSet: false, marked: false }, 'a check changes nothing')

  await h.service.consume(user, { api_calls: 1 })
  t.same(await state(), { inSet: true, marked: true }, 'the next change marks it again')
  await h.flusher.flushAll()
  const { rows } = await h.pool.query('SELECT api_calls FROM daily_usage WHERE user_id = $1', [user])
  t.equal(Number(rows[0]?.api_calls), 3, 'and it reaches daily_usage')

  await h.service.reset({ userId: user, metric: 'api_calls' })
  t.same(await state(), { inSet: true, marked: true }, 'a reset marks it too')
})


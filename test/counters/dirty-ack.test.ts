/**
 * The flusher's ack: a flushed user-day leaves the dirty set; one that changed after the read stays,
 * marked dirty since the read (not since its first change), so lagMs() tells the true lag of a
 * user who stays busy.
 */
import t from 'tap'
import { utcDay } from '../../src/clock.ts'
import { markMember, slotOf } from '../../src/counters/redis/keys.ts'
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
    await h.store.acknowledge(e.bucket, [{ userId: e.userId, day: e.day, version: e.state?.version ?? 0 }], readAt)
  }
  const left = await h.store.readDirty(100)
  t.same(left.map((e) => e.userId), [busy], 'only the user that changed since the read stays dirty')
  t.equal(left[0]?.since, readAt, `marked dirty since the read (${readAt}), not since its first change (${firstChange})`)
  t.equal(left[0]?.state?.counts.api_calls, 2_000_000, 'with its newer value still to flush')

  h.clock.advance(1000)
  t.equal(await h.flusher.lagMs(h.clock.now()), 1000, 'lag = now - read time')
})

t.test('a change marks its shard-day dirty, and a mark that went missing comes back', async (t) => {
  const h = await createUsageHarness(t)
  const user = newUserId()
  const day = utcDay(h.clock.now())
  const slot = slotOf(user)
  const member = markMember(day, slot.shard)
  const dirtyKey = h.store.keys.marks(slot.bucket)
  const inSet = async () => (await h.redis.zscore(dirtyKey, member)) !== null

  await h.service.consume(user, { api_calls: 1 })
  t.equal(await inSet(), true, 'the first change marks it')
  await h.flusher.flushAll()
  t.equal(await inSet(), false, 'the flush takes the mark away')
  t.equal(await h.service.checkLimit(user, 'api_calls').then((d) => d.current), 1)
  t.equal(await inSet(), false, 'a check changes nothing')

  await h.service.consume(user, { api_calls: 1 })
  t.equal(await inSet(), true, 'the next change marks it again')
  // A mark lost while the user-day waits (the marks set deleted by hand, another release): only a
  // user's turn from clean to dirty marks, so the store's periodic sweep must bring it back, or
  // the change would never reach Postgres.
  await h.redis.zrem(dirtyKey, member)
  await h.service.consume(user, { api_calls: 1 })
  t.equal(await inSet(), false, 'a change of a user already dirty does not mark again (one command less per decision)')
  t.equal(await h.store.repairMarks(), 1, 'the sweep finds the shard-day with a dirty user and no mark')
  t.equal(await inSet(), true, 'and marks it again')
  t.equal(await h.store.repairMarks(), 0, 'a second sweep has nothing to do')
  await h.flusher.flushAll()
  const { rows } = await h.pool.query('SELECT api_calls FROM daily_usage WHERE user_id = $1', [user])
  t.equal(Number(rows[0]?.api_calls), 3, 'and every change reaches daily_usage')

  await h.admin.reset({ userId: user, metric: 'api_calls' })
  t.equal(await inSet(), true, 'a reset marks it too')
})

/**
 * How a pass is cut into batches and acknowledged: equal batches in the pass' sorted order, and
 * in one pass a refused row, a user deleted meanwhile and an expired day hash, each handled as
 * alone (refused: stays dirty; deleted and expired: marks dropped), whatever batch they fall in.
 */
import t from 'tap'
import { Flusher, batchBounds } from '../../src/persistence/flusher.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'

t.test('batchBounds: as few batches as the size allows, of equal size, covering every row once', async (t) => {
  t.same(batchBounds(16384, 5000), [[0, 4096], [4096, 8192], [8192, 12288], [12288, 16384]])
  t.same(batchBounds(10, 5000), [[0, 10]])
  t.same(batchBounds(7, 3), [[0, 2], [2, 4], [4, 7]])
  t.same(batchBounds(0, 10), [])
  for (const [rows, size] of [[1, 1], [501, 500], [3000, 500], [99_991, 5000]] as const) {
    const bounds = batchBounds(rows, size)
    t.equal(bounds.length, Math.ceil(rows / size), `${rows}/${size}: count`)
    t.ok(bounds.every(([from, to], i) => to > from && to - from <= size && from === (bounds[i - 1]?.[1] ?? 0)), `${rows}/${size}: contiguous, none above ${size}`)
    t.equal(bounds.at(-1)?.[1], rows)
  }
})

t.test('one pass with a refused row, a deleted user and an expired day, across small batches', async (t) => {
  const h = await createUsageHarness(t, { commandTimeoutMs: 2000 })
  await h.pool.query('ALTER TABLE daily_usage ADD CONSTRAINT test_refuse_big CHECK (api_calls < 1000)')
  const users = Array.from({ length: 120 }, newUserId)
  for (const [i, u] of users.entries()) await h.service.incrementUsage(u, 'api_calls', i === 7 ? 5000 : i + 1)
  const [refused, deleted, expired] = [users[7], users[50], users[90]] as [string, string, string]
  await h.pool.query('DELETE FROM users WHERE id = $1', [deleted])
  const day = new Date(h.clock.now()).toISOString().slice(0, 10)
  // What Redis holds of a user-day that expired: nothing (its entry is gone from its shard-day).
  await h.redis.hdel(h.store.keys.userDay(expired, day), expired)

  const flusher = new Flusher({ store: h.store, pool: h.pool, batchSize: 9, writeConcurrency: 2 })
  const r = await flusher.flushOnce()
  t.same(r, { read: 119, written: 117, acked: 118 }, 'the expired day is not read; written: all but the refused and the deleted; acked: all but the refused one')
  const dirty = await h.store.readDirty(100)
  t.same(dirty.map((e) => e.userId), [refused], 'only the refused user-day stays dirty')
  const { rows } = await h.pool.query<{ user_id: string; api_calls: number }>('SELECT user_id::text, api_calls FROM daily_usage')
  t.equal(rows.length, 117)
  t.ok(rows.every((row) => row.api_calls === users.indexOf(row.user_id) + 1), 'every written row holds its own total')
  t.equal(flusher.stats.rowsWritten, 117)
})

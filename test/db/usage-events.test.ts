/**
 * usage_events queries (db/usage-events.ts) on Postgres and on the embedded database (PGlite),
 * the same statements on both: one live event per user, metric, day and threshold; the same
 * crossing copied twice is one row; a user missing from `users` is left out, not the batch; a
 * re-arm ends a day's live events (of some users, every user of a tier, some metrics) up to its
 * time; claims take due events once, lease them, and never hand one event to two claimers.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import type { Test } from 'tap'
import { createPool } from '../../src/db/client.ts'
import type { Pool } from '../../src/db/client.ts'
import { migrate } from '../../src/db/migrate.ts'
import { asPool, openEmbeddedDatabase } from '../../src/db/pglite-pool.ts'
import {
  claimDueEvents, insertEvents, listEvents, markDelivered, markFailed, markGaveUp, rearmEvents, rearmTierEvents,
} from '../../src/db/usage-events.ts'
import type { EventInsert } from '../../src/db/usage-events.ts'
import { createTestDatabase } from '../helpers/database.ts'

const T0 = Date.parse('2026-11-28T12:00:00.000Z')
const DAY = '2026-11-28'

async function user(pool: Pool, tier = 'free'): Promise<string> {
  const id = randomUUID()
  await pool.query('INSERT INTO users (id, username, tier) VALUES ($1, $2, $3)', [id, id, tier])
  return id
}

const crossing = (userId: string, over: Partial<EventInsert> = {}): EventInsert => ({
  userId, metric: 'deployments', day: DAY, threshold: 80, current: '8', limit: '10', at: T0, ...over,
})

async function suite(t: Test, pool: Pool): Promise<void> {
  t.test('one live event per user, metric, day and threshold; the same crossing twice is one row', async (t) => {
    const a = await user(pool)
    const first = await insertEvents(pool, [crossing(a), crossing(a, { threshold: 100, current: '10', at: T0 + 1 }), crossing(a, { at: T0 + 2 })])
    t.same(first, { inserted: { 80: 1, 100: 1 }, missingUsers: [] }, 'the later 80 of the batch is no new event')
    t.same((await insertEvents(pool, [crossing(a)])).inserted, { 80: 0, 100: 0 }, 'copied again: nothing')
    const rows = (await listEvents(pool, 0, 100)).filter((e) => e.user_id === a)
    t.match(rows, [
      { metric: 'deployments', date: DAY, threshold: 80, current: '8', limit: '10', created_at: '2026-11-28T12:00:00.000Z', attempts: 0, rearmed_at: null },
      { threshold: 100, created_at: '2026-11-28T12:00:00.001Z', next_attempt_at: '2026-11-28T12:00:00.001Z' },
    ])
    t.equal(rows.length, 2)
    t.ok(rows[0] && rows[1] && rows[0].id < rows[1].id, 'ids follow the crossings')
  })

  t.test('a user missing from users is left out and reported, the rest recorded', async (t) => {
    const a = await user(pool)
    const ghost = randomUUID()
    const r = await insertEvents(pool, [crossing(ghost), crossing(a, { metric: 'api_calls', current: '4000', limit: '5000' })])
    t.same(r, { inserted: { 80: 1, 100: 0 }, missingUsers: [ghost] })
  })

  t.test('re-arm: a day, some users or a tier, some metrics, up to its time', async (t) => {
    const [a, b, p] = [await user(pool), await user(pool), await user(pool, 'pro')]
    await insertEvents(pool, [a, b, p].flatMap((u) => [crossing(u), crossing(u, { metric: 'compute_hours' }), crossing(u, { day: '2026-11-27' })]))
    t.equal(await rearmEvents(pool, { userIds: [a], day: DAY, at: T0 - 1 }), 0, 'not crossings made after the re-arm')
    t.equal(await rearmEvents(pool, { userIds: [a], day: DAY, at: T0, metrics: ['deployments'] }), 1)
    t.equal(await rearmEvents(pool, { userIds: [a], day: DAY, at: T0 }), 1, 'the other metric; the first not twice')
    t.equal(await rearmEvents(pool, { userIds: [], day: DAY, at: T0 }), 0)
    t.equal(await rearmTierEvents(pool, { tier: 'pro', day: DAY, at: T0 + 5, metrics: ['compute_hours'] }), 1)
    const live = async (u: string) => (await listEvents(pool, 0, 1000)).filter((e) => e.user_id === u && e.rearmed_at === null)
      .map((e) => `${e.date} ${e.metric}`).sort()
    t.same(await live(a), ['2026-11-27 deployments'], 'a: only the other day stays live')
    t.same(await live(b), ['2026-11-27 deployments', `${DAY} compute_hours`, `${DAY} deployments`], 'b untouched')
    t.same(await live(p), ['2026-11-27 deployments', `${DAY} deployments`], 'pro: compute_hours only')
    t.equal((await listEvents(pool, 0, 1000)).find((e) => e.user_id === p && e.rearmed_at !== null)?.rearmed_at, '2026-11-28T12:00:00.005Z')
    t.same((await insertEvents(pool, [crossing(a, { at: T0 + 10, current: '9' })])).inserted, { 80: 1, 100: 0 }, 're-armed: the next crossing is an event')
    t.equal(await rearmEvents(pool, { userIds: null, day: DAY, at: T0 + 10 }) >= 5, true, 'everyone of the day')
  })

  t.test('claims: due events once each, leased; delivered, failed and given up', async (t) => {
    await pool.query('DELETE FROM usage_events')
    const users = await Promise.all(Array.from({ length: 6 }, () => user(pool)))
    await insertEvents(pool, users.map((u, i) => crossing(u, { at: T0 + i })))
    t.same(await claimDueEvents(pool, T0 - 1, 60_000, 10), [], 'nothing due before its crossing')
    const claims = await Promise.all([claimDueEvents(pool, T0 + 10, 60_000, 4), claimDueEvents(pool, T0 + 10, 60_000, 4)])
    const ids = claims.flat().map((e) => e.id)
    t.equal(ids.length, 6, 'every event claimed')
    t.equal(new Set(ids).size, 6, 'none by both')
    t.ok(claims.flat().every((e) => e.attempts === 1))
    t.same(await claimDueEvents(pool, T0 + 10, 60_000, 10), [], 'leased: not due again')
    const [d, f, g] = ids as [number, number, number]
    await markDelivered(pool, d, T0 + 20)
    await markFailed(pool, f, 'HTTP 500', T0 + 30)
    await markGaveUp(pool, g, 'HTTP 500', T0 + 40)
    const again = await claimDueEvents(pool, T0 + 30, 60_000, 10)
    t.same(again.map((e) => [e.id, e.attempts]), [[f, 2]], 'the failed one, due at its next attempt')
    const rows = await listEvents(pool, 0, 100)
    t.match(rows.find((e) => e.id === d), { delivered_at: '2026-11-28T12:00:00.020Z', last_error: null })
    t.match(rows.find((e) => e.id === g), { gave_up_at: '2026-11-28T12:00:00.040Z', last_error: 'HTTP 500', delivered_at: null })
    t.same(await claimDueEvents(pool, T0 + 3_600_000, 60_000, 10).then((r) => r.map((e) => e.id).includes(d) || r.map((e) => e.id).includes(g)), false,
      'delivered and given-up events are never claimed again')
  })
}

t.test('Postgres', async (t) => {
  const db = await createTestDatabase(t)
  const pool = createPool(db.url)
  t.teardown(() => pool.end())
  await suite(t, pool)
})

t.test('embedded database (PGlite)', async (t) => {
  const embedded = await openEmbeddedDatabase(t.testdir())
  t.teardown(() => embedded.end())
  const pool = asPool(embedded)
  await migrate(pool)
  await embedded.refreshTypes()
  await suite(t, pool)
})

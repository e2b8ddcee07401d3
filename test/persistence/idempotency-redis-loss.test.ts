/**
 * Regression test (issue 11, finding 4): idempotency keys survive a Redis that loses its data.
 * Before, re-sending 50 keys already answered 200 after a Redis restart without persistence
 * counted all 50 again. Now the flusher copies each answer to idempotency_records before the
 * counts it made, and after a loss a key missing in Redis is looked up there before anything is
 * applied: the first 50 keys replay, and the keys answered in the last (unflushed) interval —
 * lost together with their counts — count exactly once more. Every key counts once in the end.
 */
import t from 'tap'
import { createUsers, usageTotals } from '../helpers/load.ts'
import { waitUntil } from '../helpers/net.ts'
import { serviceOnThrowawayRedis } from '../helpers/redis-loss.ts'

t.test('keys answered before a Redis restart without persistence are replayed, not counted again', async (t) => {
  const { db, svc, loseRedis } = await serviceOnThrowawayRedis(t, { FLUSH_INTERVAL_MS: '500' })
  const [user] = await createUsers(db.pool, svc.env.JWT_SECRET as string, 1, 'enterprise')
  if (!user) throw new Error('no user')
  const increment = async (key: string): Promise<{ status: number; current: number; replayed: boolean }> => {
    const res = await fetch(`${svc.baseUrl}/api/usage/increment`, {
      method: 'POST',
      headers: { authorization: user.authorization, 'content-type': 'application/json' },
      body: JSON.stringify({ metric: 'api_calls', amount: 1, idempotency_key: key }),
      signal: AbortSignal.timeout(5000),
    })
    const body = await res.json() as { current?: number }
    return { status: res.status, current: body.current ?? -1, replayed: res.headers.get('idempotent-replayed') === 'true' }
  }
  const apiCalls = async (): Promise<number> => (await usageTotals(db.pool, [user.id])).get(user.id)?.api ?? 0
  const kept = async (): Promise<number> =>
    (await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM idempotency_records WHERE user_id = $1', [user.id])).rows[0]?.n ?? 0

  const first: number[] = []
  for (let i = 0; i < 50; i++) first.push((await increment(`job-${i}`)).current)
  t.same(first, Array.from({ length: 50 }, (_, i) => i + 1), '50 keyed increments, each counted')
  await waitUntil(async () => (await apiCalls()) === 50 && (await kept()) === 50, { what: 'flush of the 50 counts and their answers', timeoutMs: 10_000 })
  // Ten more right before the loss: flushed or not by then, each must count exactly once.
  const late = await Promise.all(Array.from({ length: 10 }, (_, i) => increment(`late-${i}`)))
  t.same(late.map((r) => r.status), Array(10).fill(200))

  await loseRedis()

  const again = await Promise.all(Array.from({ length: 50 }, (_, i) => increment(`job-${i}`)))
  t.same(again.map((r) => r.status), Array(50).fill(200), 'every retry answered 200')
  t.ok(again.every((r) => r.replayed), 'every retry replayed its first answer')
  t.same(again.map((r) => r.current), first, 'with the first answer\'s numbers')
  const lateAgain = await Promise.all(Array.from({ length: 10 }, (_, i) => increment(`late-${i}`)))
  t.same(lateAgain.map((r) => r.status), Array(10).fill(200), 'the late keys answered again (replayed if flushed, else counted anew with their lost counts)')
  const fresh = await increment('job-new')
  t.match(fresh, { status: 200, replayed: false, current: 61 }, 'a new key counts on top of 60: no key counted twice, none lost')
  await waitUntil(async () => (await apiCalls()) === 61, { what: 'daily_usage at 61', timeoutMs: 10_000 })
  t.equal(await apiCalls(), 61, 'daily_usage holds each of the 61 keys once')
  if (!t.passing()) t.comment(svc.output())
})

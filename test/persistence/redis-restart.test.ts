/**
 * Invariant 4: Redis loses its data (a restart without persistence) mid-day. The counts come back
 * from Postgres before the next decision, so a user who spent 8 of 10 deployments gets exactly 2
 * more — even when the first requests after the restart race each other — and daily_usage ends
 * at 10, never going backwards on the way.
 */
import t from 'tap'
import { createUsers, usageTotals } from '../helpers/load.ts'
import { waitUntil } from '../helpers/net.ts'
import { serviceOnThrowawayRedis } from '../helpers/redis-loss.ts'

t.test('Redis restarted empty: counts restored from Postgres, exactly 2 of 10 left', async (t) => {
  const { db, svc, loseRedis } = await serviceOnThrowawayRedis(t, { FLUSH_INTERVAL_MS: '300' })
  const [user] = await createUsers(db.pool, svc.env.JWT_SECRET as string, 1, 'free')
  if (!user) throw new Error('no user')
  const deploy = async (): Promise<number> => {
    const res = await fetch(`${svc.baseUrl}/api/deploy`, {
      method: 'POST', headers: { authorization: user.authorization }, signal: AbortSignal.timeout(5000),
    })
    await res.arrayBuffer()
    return res.status
  }
  const deployments = async (): Promise<number> => (await usageTotals(db.pool, [user.id])).get(user.id)?.dep ?? 0

  for (let i = 0; i < 8; i++) t.equal(await deploy(), 201, `deployment ${i + 1} of 10`)
  await waitUntil(async () => (await deployments()) === 8, { what: 'flush of the 8 deployments', timeoutMs: 5000 })

  await loseRedis()

  // Six requests at once against the blank Redis: each must see the restored 8, not 0.
  const burst = await Promise.all(Array.from({ length: 6 }, () => deploy()))
  const statuses = burst.filter((s) => s !== 201 && s !== 429)
  t.same(statuses, [], `only 201/429 answers (${burst.join(',')})`)
  t.equal(burst.filter((s) => s === 201).length, 2, 'exactly 2 more admitted')
  t.equal(burst.filter((s) => s === 429).length, 4, 'the rest denied')
  t.equal(await deploy(), 429, 'and the next one too')

  await waitUntil(async () => (await deployments()) === 10, { what: 'daily_usage reaching 10', timeoutMs: 5000 })
  t.equal(await deployments(), 10, 'daily_usage ends at 10')
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM daily_usage WHERE user_id = $1', [user.id])
  t.equal(rows[0]?.n, 1, 'one row for the day')
  if (!t.passing()) t.comment(svc.output())
})

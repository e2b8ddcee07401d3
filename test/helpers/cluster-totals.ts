/**
 * What the cluster fault tests compare after their load: each user's api_calls in daily_usage, the
 * users whose row disagrees with what the clients saw, and each user's count as Redis itself holds
 * it, read through a fresh cluster client whose loader refuses (missing state is an error, not 0).
 */
import type pg from 'pg'
import { createClusterClient, connectRedis } from '../../src/counters/redis/client.ts'
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { SCALE } from '../../src/metrics.ts'
import type { Teardownable } from './database.ts'
import type { RedisCluster } from './redis-cluster.ts'

export interface Recorded {
  /** api_calls per user, summed over the days it has rows for. */
  byUser: Map<string, number>
  /** The user-days daily_usage holds. */
  userDays: { id: string; day: string }[]
}

export async function recordedApiCalls(pool: pg.Pool, ids: readonly string[]): Promise<Recorded> {
  const { rows } = await pool.query<{ id: string; day: string; n: string }>(
    `SELECT user_id::text AS id, to_char(date, 'YYYY-MM-DD') AS day, api_calls::text AS n
       FROM daily_usage WHERE user_id = ANY($1::uuid[])`, [ids])
  const byUser = new Map<string, number>()
  for (const r of rows) byUser.set(r.id, (byUser.get(r.id) ?? 0) + Number(r.n))
  return { byUser, userDays: rows.map((r) => ({ id: r.id, day: r.day })) }
}

/**
 * Users whose recorded count is below their 200s, or above their 200s plus their 503s (a 503 may
 * have been counted: never admitted).
 */
export function mismatches(
  ids: readonly string[], recorded: Map<string, number>, admitted: Map<string, number>, errors: Map<string, number>,
): { id: string; recorded: number; admitted: number; errors: number }[] {
  return ids.map((id) => ({ id, recorded: recorded.get(id) ?? 0, admitted: admitted.get(id) ?? 0, errors: errors.get(id) ?? 0 }))
    .filter((u) => u.recorded < u.admitted || u.recorded > u.admitted + u.errors)
}

/** api_calls per user as Redis holds them for these user-days (a fresh client: its own slot map). */
export async function redisApiCalls(
  t: Teardownable, cluster: RedisCluster, prefix: string, userDays: readonly { id: string; day: string }[],
): Promise<Map<string, number>> {
  const client = createClusterClient({ nodes: cluster.seeds, commandTimeoutMs: 2000 })
  t.teardown(() => client.disconnect())
  await connectRedis(client, cluster.env)
  const store = new RedisCounterStore(client, {
    prefix,
    loader: async (userId, day) => {
      throw new Error(`Redis has no state for ${userId} on ${day}`)
    },
  })
  const inRedis = new Map<string, number>()
  for (const { id, day } of userDays) {
    const answer = await store.decide({ mode: 'check', userId: id, day, now: Date.now(), metrics: [{ metric: 'api_calls', amount: 0, limit: null }] })
    inRedis.set(id, (inRedis.get(id) ?? 0) + (answer.current[0] ?? 0) / SCALE)
  }
  return inRedis
}

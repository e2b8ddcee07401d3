/**
 * Reads a service's Redis counters from outside (tests only): what the service believes each user
 * spent, to compare with daily_usage, and how much is still waiting for a flush.
 */
import type { Redis } from 'ioredis'
import { DAY_MS, utcDay } from '../../src/clock.ts'
import { BUCKETS, KeySpace } from '../../src/counters/redis/keys.ts'
import { SCALE } from '../../src/metrics.ts'

/** Days a test running now may have counted on: yesterday (a run across midnight) and today. */
export function recentDays(now = Date.now()): string[] {
  return [utcDay(now - DAY_MS), utcDay(now)]
}

/** Per user: api_calls and deployments in Redis over `days` (whole units). */
export async function redisTotals(
  redis: Redis,
  prefix: string,
  userIds: string[],
  days: string[] = recentDays(),
): Promise<Map<string, { api: number; dep: number }>> {
  const keys = new KeySpace(prefix)
  const pipeline = redis.pipeline()
  for (const u of userIds) for (const d of days) pipeline.hget(keys.userDay(u, d), u)
  const replies = (await pipeline.exec()) ?? []
  const out = new Map<string, { api: number; dep: number }>()
  let i = 0
  for (const u of userIds) {
    const total = { api: 0, dep: 0 }
    for (let k = 0; k < days.length; k++) {
      const [err, raw] = replies[i++] ?? [new Error('no reply'), null]
      if (err) throw err
      // The user's entry "d,a,c,s,v,f", or null when the user has none that day.
      const [d, a] = typeof raw === 'string' ? raw.split(',') : []
      total.api += Number(a ?? 0) / SCALE
      total.dep += Number(d ?? 0) / SCALE
    }
    out.set(u, total)
  }
  return out
}

/** Number of shard-days marked dirty (holding changes not yet flushed) under `prefix`. */
export async function dirtyCount(redis: Redis, prefix: string): Promise<number> {
  const keys = new KeySpace(prefix)
  const pipeline = redis.pipeline()
  for (let b = 0; b < BUCKETS; b++) pipeline.zcard(keys.marks(b))
  const replies = (await pipeline.exec()) ?? []
  return replies.reduce((sum, [err, n]) => {
    if (err) throw err
    return sum + Number(n)
  }, 0)
}

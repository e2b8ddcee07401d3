/**
 * Library benchmark: decisions per second from one Node process with `inFlight` calls outstanding,
 * quota's `usage.consume` against rate-limiter-flexible's `RateLimiterRedis.consume`, in
 * interleaved rounds; plus the Node CPU µs and Redis CPU µs each decision costs.
 */
import { createQuotaEngine } from '../../src/engine.ts'
import { Redis } from 'ioredis'
import { RateLimiterRedis } from 'rate-limiter-flexible'
import { systemClock } from '../../src/clock.ts'
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import { createPool } from '../../src/db/client.ts'
import { median, redisCounters } from './env.ts'
import type { BenchEnv } from './env.ts'

export interface LibraryOptions {
  rounds: number
  durationS: number
  inFlight: number
}

export interface LibraryRound {
  variant: string
  round: number
  decisionsPerS: number
  nodeCpuUsPerDecision: number
  redisCpuUsPerDecision: number
  redisCmdsPerDecision: number
}

async function drive(op: (i: number) => Promise<unknown>, inFlight: number, durationS: number): Promise<number> {
  const end = performance.now() + durationS * 1000
  let done = 0
  const worker = async (w: number): Promise<void> => {
    for (let i = w; performance.now() < end; i += inFlight) {
      await op(i)
      done++
    }
  }
  await Promise.all(Array.from({ length: inFlight }, (_, w) => worker(w)))
  return done
}

export async function runLibrary(env: BenchEnv, options: LibraryOptions) {
  const pool = createPool(env.db.url)
  const redis = createRedisClient({ url: env.redis.url, commandTimeoutMs: 5000, connectionName: 'bench-quota' })
  await connectRedis(redis, env.redis.url)
  // The engine as production wires it, without the flusher's timer and the scheduler.
  const engine = await createQuotaEngine({
    redis, database: pool, databaseUrl: env.db.url, prefix: env.prefix, clock: systemClock, commandTimeoutMs: 5000,
    flush: false, scheduler: false, checkRedisSettings: false,
  })
  const { usage } = engine
  // The embedded mode's engine: counters in this process (history on the same Postgres, touched
  // only by a user's first seed and the flusher, whose timer is off here).
  const embeddedPool = createPool(env.db.url)
  const embedded = await createQuotaEngine({
    mode: 'embedded', database: embeddedPool, databaseUrl: env.db.url, clock: systemClock, flush: false, scheduler: false,
  })
  const peerRedis = new Redis(env.redis.url)
  const rlf = new RateLimiterRedis({ storeClient: peerRedis, keyPrefix: `${env.prefix}rlf`, points: 2_000_000_000, duration: 86_400 })
  const stats = new Redis(env.redis.url)
  const users = env.users
  const variants = [
    { name: 'quota usage.consume', op: (i: number) => usage.consume(users[i % users.length] as string, { api_calls: 1 }) },
    { name: 'quota embedded usage.consume', op: (i: number) => embedded.usage.consume(users[i % users.length] as string, { api_calls: 1 }) },
    { name: 'rate-limiter-flexible', op: (i: number) => rlf.consume(users[i % users.length] as string, 1) },
  ]
  const rounds: LibraryRound[] = []
  try {
    // Warm-up: every user once per variant, 20 at a time (tiers cached, counters seeded: a cold
    // user's first decision reads Postgres, which is not what this section measures), then JIT.
    for (const v of variants) {
      for (let i = 0; i < users.length; i += 20) await Promise.all(Array.from({ length: Math.min(20, users.length - i) }, (_, k) => v.op(i + k)))
      await drive(v.op, 100, 0.5)
    }
    for (let round = 1; round <= options.rounds; round++) {
      for (const v of variants) {
        const cpu0 = process.cpuUsage()
        const r0 = await redisCounters(stats)
        const t0 = performance.now()
        const n = await drive(v.op, options.inFlight, options.durationS)
        const seconds = (performance.now() - t0) / 1000
        const cpu = process.cpuUsage(cpu0)
        const r1 = await redisCounters(stats)
        rounds.push({
          variant: v.name,
          round,
          decisionsPerS: n / seconds,
          nodeCpuUsPerDecision: (cpu.user + cpu.system) / n,
          redisCpuUsPerDecision: ((r1.cpu - r0.cpu) * 1e6) / n,
          redisCmdsPerDecision: (r1.calls - r0.calls - 2) / n,
        })
      }
    }
  } finally {
    await engine.close()
    await embedded.close()
    await embeddedPool.end()
    redis.disconnect()
    peerRedis.disconnect()
    stats.disconnect()
    await pool.end()
  }
  const summary = variants.map((v) => {
    const rs = rounds.filter((r) => r.variant === v.name)
    return {
      variant: v.name,
      decisionsPerS: median(rs.map((r) => r.decisionsPerS)),
      nodeCpuUsPerDecision: median(rs.map((r) => r.nodeCpuUsPerDecision)),
      redisCpuUsPerDecision: median(rs.map((r) => r.redisCpuUsPerDecision)),
      redisCmdsPerDecision: median(rs.map((r) => r.redisCmdsPerDecision)),
    }
  })
  const byName = (name: string) => summary.find((v) => v.variant === name)?.decisionsPerS ?? Number.NaN
  const quota = byName('quota usage.consume')
  return {
    rounds,
    summary,
    ratio: quota / byName('rate-limiter-flexible'),
    /** Embedded (in-process store) decisions/s over the Redis store's, same run. */
    embeddedRatio: byName('quota embedded usage.consume') / quota,
  }
}

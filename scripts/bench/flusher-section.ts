/**
 * Flusher benchmark: `users` dirty user-days in Redis (users present in `users`), then one
 * flushAll into daily_usage, timed. Besides wall time, the CPU seconds each process spent on the
 * flush (this node process, redis-server, the database's Postgres backends): on a shared machine
 * the wall time says as much about the neighbours as about the code, the CPU seconds do not.
 */
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import { createPool } from '../../src/db/client.ts'
import type { Pool } from '../../src/db/client.ts'
import { Flusher } from '../../src/persistence/flusher.ts'
import { benchUserId, processCpuSeconds, redisCounters } from './env.ts'
import type { BenchEnv } from './env.ts'

/** CPU seconds so far of each backend serving `pool`'s database. */
async function backendCpu(pool: Pool): Promise<Map<number, number>> {
  const { rows } = await pool.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = current_database()')
  const out = new Map<number, number>()
  for (const { pid } of rows) {
    try {
      out.set(pid, processCpuSeconds(pid))
    } catch {
      // the backend ended meanwhile (or runs on another host): not counted
    }
  }
  return out
}

export async function runFlusherBench(env: BenchEnv, users: number) {
  const pool = createPool(env.db.url)
  const ids = Array.from({ length: users }, (_, i) => benchUserId(5, i))
  await pool.query(`INSERT INTO users (id, username, tier) SELECT u, u::text, 'bench' FROM unnest($1::uuid[]) u ON CONFLICT DO NOTHING`, [ids])
  const redis = createRedisClient({ url: env.redis.url, commandTimeoutMs: 10_000 })
  await connectRedis(redis, env.redis.url)
  const store = new RedisCounterStore(redis, { prefix: 'flushbench:' })
  const now = Date.parse('2026-11-28T12:00:00Z')
  let next = 0
  await Promise.all(Array.from({ length: 500 }, async () => {
    while (next < ids.length) {
      const userId = ids[next++] as string
      await store.decide({ mode: 'increment', userId, day: '2026-11-28', now, metrics: [{ metric: 'api_calls', amount: 3_000_000, limit: null }, { metric: 'compute_hours', amount: 250_000, limit: null }] })
    }
  }))
  const flusher = new Flusher({ store, pool })
  // The flusher's connections opened before the clock starts, as in a running service.
  await Promise.all(Array.from({ length: 4 }, () => pool.query('SELECT 1')))
  const cpu0 = { node: process.cpuUsage(), redis: (await redisCounters(redis)).cpu, pg: await backendCpu(pool) }
  const t0 = performance.now()
  const result = await flusher.flushAll()
  const seconds = (performance.now() - t0) / 1000
  const nodeCpu = process.cpuUsage(cpu0.node)
  const redisCpu = (await redisCounters(redis)).cpu - cpu0.redis
  let pgCpu = 0
  for (const [pid, s] of await backendCpu(pool)) pgCpu += s - (cpu0.pg.get(pid) ?? 0)
  const cpu = { node: (nodeCpu.user + nodeCpu.system) / 1e6, redis: redisCpu, postgres: pgCpu }
  const { rows } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM daily_usage WHERE user_id = ANY($1::uuid[])`, [ids])
  redis.disconnect()
  await pool.end()
  if ((rows[0]?.n ?? 0) !== users) throw new Error(`flusher bench: expected ${users} rows, found ${rows[0]?.n}`)
  const cpuTotal = cpu.node + cpu.redis + cpu.postgres
  console.log(`flusher CPU seconds: node ${cpu.node.toFixed(2)}, redis ${cpu.redis.toFixed(2)}, postgres ${cpu.postgres.toFixed(2)} ` +
    `= ${Math.round(result.written / cpuTotal)} rows per CPU-second (${flusher.stats.passes} passes)\n`)
  return { users, batchSize: flusher.batchSize, seconds, rowsPerS: result.written / seconds, written: result.written, cpuSeconds: cpu, rowsPerCpuSecond: result.written / cpuTotal }
}

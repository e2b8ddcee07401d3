/**
 * Flusher throughput: N dirty user-days (default 100 000) in a throwaway redis-server, their users
 * in a fresh database on a throwaway Postgres cluster, then one `flusher.flushAll()`, timed.
 *
 *   node --import tsx scripts/bench/flusher.ts [--users 100000] [--batch 5000] [--per-bucket 256]
 *                                              [--concurrency 2] [--runs 3] [--redis-timeout 250]
 *
 * Reported per run: wall time and rows/s; the wall time of the flusher's three steps (reading
 * Redis, writing Postgres, acking); and the CPU seconds each process spent (this node process,
 * redis-server, every Postgres backend) — on a shared, busy machine wall time says more about the
 * neighbours than about the code, CPU seconds do not. Run 1 inserts rows; later runs re-dirty every
 * user-day (one more increment each) and measure updates, the steady state. Exactness is checked
 * after every run: daily_usage must hold exactly what Redis holds for every user.
 *
 * The store's Redis client is built like the service's (createRedisClient), with the service's
 * default command timeout of 250 ms unless --redis-timeout says otherwise: the flusher shares the
 * decisions' connection in the service, so the bench does too.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { connectRedis, createRedisClient } from '../../src/counters/redis/client.ts'
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import type { MetricAmount } from '../../src/counters/store.ts'
import { createPool, ensureDatabase } from '../../src/db/client.ts'
import { migrate } from '../../src/db/migrate.ts'
import { Flusher } from '../../src/persistence/flusher.ts'
import { startPostgresServer } from '../../test/helpers/postgres-server.ts'
import { startRedisServer } from '../../test/helpers/redis-server.ts'

const { values } = parseArgs({
  options: {
    users: { type: 'string', default: '100000' },
    batch: { type: 'string', default: '' },
    'per-bucket': { type: 'string', default: '' },
    concurrency: { type: 'string', default: '' },
    runs: { type: 'string', default: '3' },
    'redis-timeout': { type: 'string', default: '250' },
  },
})
const USERS = Number(values.users)
const RUNS = Number(values.runs)
const DAY = '2026-11-28'
const NOW = Date.parse(`${DAY}T12:00:00Z`)
const TICKS = 100 // USER_HZ on Linux

const cleanups: (() => Promise<unknown>)[] = []
const t = { teardown: (fn: () => unknown) => void cleanups.push(async () => fn()) }

/** CPU seconds of `rootPid` and its children (a postmaster's backends), live or exited. */
function processTreeCpu(rootPid: number): number {
  let ticks = 0
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = readFileSync(join('/proc', entry, 'stat'), 'utf8')
    } catch {
      continue
    }
    // Fields after the ")" of the command name: state ppid ... utime(14) stime(15), 1-based overall.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const pid = Number(entry)
    const ppid = Number(fields[1])
    if (ppid === rootPid) ticks += Number(fields[11]) + Number(fields[12])
    // The root's own time, and that of children that already exited (cutime, cstime).
    if (pid === rootPid) ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])
  }
  return ticks / TICKS
}


async function main(): Promise<void> {
  const redisServer = await startRedisServer(t)
  const postgres = await startPostgresServer(t)
  const url = postgres.url('flushbench')
  await ensureDatabase(url)
  await migrate(url)
  const postmasterPid = Number(readFileSync(join(postgres.dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0])
  const pool = createPool(url, { max: 8 })
  cleanups.unshift(() => pool.end())
  const redis = createRedisClient({ url: redisServer.url, commandTimeoutMs: Number(values['redis-timeout']) })
  await connectRedis(redis, redisServer.url)
  cleanups.unshift(async () => redis.disconnect())
  const redisCpu = async (): Promise<number> => {
    const info = await redis.info('cpu')
    const get = (k: string): number => Number(new RegExp(`${k}:([\\d.]+)`).exec(info)?.[1] ?? 0)
    return get('used_cpu_user') + get('used_cpu_sys')
  }

  let t0 = performance.now()
  const { rows } = await pool.query<{ id: string }>(
    `INSERT INTO users (id, username, tier)
     SELECT u, u::text, 'enterprise' FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, $1)) s
     RETURNING id::text`,
    [USERS],
  )
  const ids = rows.map((r) => r.id)
  console.log(`${USERS} users inserted in ${((performance.now() - t0) / 1000).toFixed(2)} s`)

  // Dirtying goes through its own connection with a long timeout: an increment that timed out
  // may still have been applied, so it must not be retried, nor time out.
  const loader = createRedisClient({ url: redisServer.url, commandTimeoutMs: 60_000 })
  await connectRedis(loader, redisServer.url)
  cleanups.unshift(async () => loader.disconnect())
  const writer = new RedisCounterStore(loader, { prefix: 'flushbench:' })
  const store = new RedisCounterStore(redis, { prefix: 'flushbench:' })
  const metrics: MetricAmount[] = [
    { metric: 'api_calls', amount: 3_000_000, limit: null },
    { metric: 'compute_hours', amount: 250_000, limit: null },
  ]
  const dirty = async (): Promise<void> => {
    let next = 0
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (next < ids.length) {
        const userId = ids[next++] as string
        await writer.decide({ mode: 'increment', userId, day: DAY, now: NOW, metrics })
      }
    }))
  }

  // Wall time of the flusher's three steps (reads are serial; writes and acks overlap each other).
  const timing = { read: 0, write: 0, ack: 0 }
  const busy = { write: 0, ack: 0 }
  const wrap = <A extends unknown[], R>(fn: (...a: A) => Promise<R>, key: keyof typeof timing) => {
    let since = 0
    return async (...a: A): Promise<R> => {
      const start = performance.now()
      if (key !== 'read' && busy[key]++ === 0) since = start
      try {
        return await fn(...a)
      } finally {
        const end = performance.now()
        if (key === 'read') timing.read += end - start
        else if (--busy[key] === 0) timing[key] += end - since
      }
    }
  }
  store.readDirty = wrap(store.readDirty.bind(store), 'read')
  store.acknowledge = wrap(store.acknowledge.bind(store), 'ack')
  const query = pool.query.bind(pool) as (...a: unknown[]) => Promise<unknown>
  ;(pool as unknown as { query: typeof query }).query = wrap(query, 'write')

  const flusher = new Flusher({
    store, pool,
    ...(values.batch ? { batchSize: Number(values.batch) } : {}),
    ...(values['per-bucket'] ? { perBucket: Number(values['per-bucket']) } : {}),
    ...(values.concurrency ? { writeConcurrency: Number(values.concurrency) } : {}),
  })
  console.log(`flusher: batch size ${flusher.batchSize}, per bucket ${flusher.perBucket} (x64 buckets per pass), ` +
    `redis command timeout ${values['redis-timeout']} ms, postgres fsync=off`)

  for (let run = 1; run <= RUNS; run++) {
    t0 = performance.now()
    await dirty()
    const dirtySeconds = (performance.now() - t0) / 1000
    timing.read = timing.write = timing.ack = 0
    const passesBefore = flusher.stats.passes
    const cpu0 = { node: process.cpuUsage(), redis: await redisCpu(), pg: processTreeCpu(postmasterPid) }
    t0 = performance.now()
    const result = await flusher.flushAll()
    const seconds = (performance.now() - t0) / 1000
    const nodeCpu = process.cpuUsage(cpu0.node)
    const cpu = {
      node: (nodeCpu.user + nodeCpu.system) / 1e6,
      redis: (await redisCpu()) - cpu0.redis,
      pg: processTreeCpu(postmasterPid) - cpu0.pg,
    }
    const check = await pool.query<{ n: number; api: number }>(
      `SELECT count(*)::int AS n, sum(api_calls)::bigint AS api FROM daily_usage WHERE date = $1`, [DAY],
    )
    const exact = check.rows[0]?.n === USERS && check.rows[0]?.api === USERS * 3 * run
    const cpuTotal = cpu.node + cpu.redis + cpu.pg
    console.log(
      `run ${run} (${run === 1 ? 'inserts' : 'updates'}; dirtied in ${dirtySeconds.toFixed(1)} s): ` +
      `flushAll wrote ${result.written} rows in ${seconds.toFixed(2)} s = ${Math.round(result.written / seconds)} rows/s ` +
      `in ${flusher.stats.passes - passesBefore} passes | wall: read ${(timing.read / 1000).toFixed(2)} s, ` +
      `write ${(timing.write / 1000).toFixed(2)} s, ack ${(timing.ack / 1000).toFixed(2)} s | ` +
      `cpu: node ${cpu.node.toFixed(2)} s, redis ${cpu.redis.toFixed(2)} s, postgres ${cpu.pg.toFixed(2)} s ` +
      `= ${Math.round(result.written / cpuTotal)} rows per cpu-second | exact: ${exact ? 'yes' : `NO (${JSON.stringify(check.rows[0])})`}`,
    )
    if (!exact) process.exitCode = 1
  }
}

try {
  await main()
} finally {
  // Clients first (unshifted), then the servers (in start order).
  for (const fn of cleanups) await fn().catch(() => {})
}

/**
 * What every benchmark section stands on: a throwaway redis-server (so INFO cpu / commandstats
 * count only the benchmark's work), a fresh migrated database, and bench tiers and users.
 */
import { readFileSync } from 'node:fs'
import { benchUsers, seedBenchUsers } from './bench-users.ts'
import { createTestDatabase } from '../../test/helpers/database.ts'
import type { TestDatabase } from '../../test/helpers/database.ts'
import { startRedisServer } from '../../test/helpers/redis-server.ts'
import type { RedisServer } from '../../test/helpers/redis-server.ts'

export class Teardown {
  #fns: (() => unknown)[] = []
  teardown(fn: () => unknown): void {
    this.#fns.push(fn)
  }
  async run(): Promise<void> {
    for (const fn of this.#fns.reverse()) await Promise.resolve(fn()).catch(() => {})
  }
}

export interface BenchEnv {
  redis: RedisServer
  db: TestDatabase
  prefix: string
  /** Users of tier `bench` (limits far above anything a round reaches). */
  users: string[]
  /** Users of tier `bench_one` (every limit 1: once spent, every decision is a denial). */
  overUsers: string[]
  teardown: Teardown
}

export { benchUserId } from './bench-users.ts'

export async function benchEnv(userCount = 1000): Promise<BenchEnv> {
  const teardown = new Teardown()
  const redis = await startRedisServer(teardown)
  const db = await createTestDatabase(teardown)
  const { users, overUsers } = benchUsers(userCount)
  await seedBenchUsers(db.pool, users, overUsers)
  return { redis, db, prefix: 'bench:', users, overUsers, teardown }
}

/** Percentile of a sorted array. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN
}

/** Median of an unsorted array. */
export function median(xs: number[]): number {
  return percentile([...xs].sort((a, b) => a - b), 50)
}

/** CPU seconds (user + sys) of a process, from /proc (Linux). */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12]) // utime, stime (fields 14 and 15)
  return ticks / 100
}

export interface RedisCounters {
  cpu: number
  calls: number
  commands: Record<string, number>
}

/** used_cpu_user + used_cpu_sys and per-command call counts of a Redis server. */
export async function redisCounters(client: { info(section: string): Promise<string> }): Promise<RedisCounters> {
  const cpu = await client.info('cpu')
  const stats = await client.info('commandstats')
  const num = (name: string): number => Number(new RegExp(`${name}:([\\d.]+)`).exec(cpu)?.[1] ?? 0)
  const commands: Record<string, number> = {}
  let calls = 0
  for (const m of stats.matchAll(/cmdstat_([^:]+):calls=(\d+)/g)) {
    commands[m[1] as string] = Number(m[2])
    calls += Number(m[2])
  }
  return { cpu: num('used_cpu_user') + num('used_cpu_sys'), calls, commands }
}

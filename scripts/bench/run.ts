/**
 * npm run bench — every benchmark section, printed as tables and saved as JSON under bench/results/.
 *   --smoke            a short run of each section (npm test runs it so the scripts never rot)
 *   --only a,b         sections: http, library, flusher, memory, midnight, cluster
 *   --rounds N --duration S --connections N
 *   --users list|random  how HTTP requests pick their user (http.ts: the issue's list by default)
 * Services: a throwaway redis-server and a fresh database on the local Postgres, removed at the end
 * (not started for `--only cluster`: that section starts its own Redis Clusters, cluster.ts).
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { parseArgs } from 'node:util'
import { benchEnv } from './env.ts'
import type { BenchEnv } from './env.ts'
import { CONTROL, THREE_MASTERS, runCluster } from './cluster.ts'
import { runFlusherBench } from './flusher-section.ts'
import { runHttp } from './http.ts'
import type { UserMode } from './http.ts'
import { SMOKE_VARIANTS } from './http-variants.ts'
import { runLibrary } from './library.ts'
import { runMemory, runMidnight } from './redis-sections.ts'

const { values } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    only: { type: 'string' },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    connections: { type: 'string', default: '100' },
    users: { type: 'string', default: 'list' },
  },
})
const smoke = values.smoke === true
const sections = new Set((values.only ?? 'http,library,flusher,memory,midnight,cluster').split(','))
const rounds = Number(values.rounds ?? (smoke ? 1 : 5))
const duration = Number(values.duration ?? (smoke ? 1 : 10))
if (values.users !== 'list' && values.users !== 'random') throw new Error(`--users must be list or random, not ${values.users}`)
const httpUsers: UserMode = values.users

const fmt = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a')
function table(headers: string[], rows: (string | number)[][]): string {
  const lines = [`| ${headers.join(' | ')} |`, `|${headers.map(() => '---').join('|')}|`]
  for (const r of rows) lines.push(`| ${r.join(' | ')} |`)
  return lines.join('\n')
}

const redisVersion = (() => {
  try {
    return execFileSync('redis-server', ['--version'], { encoding: 'utf8' }).trim()
  } catch {
    return 'unknown'
  }
})()
const setup = {
  date: new Date().toISOString(),
  node: process.version,
  cpus: `${cpus().length} × ${cpus()[0]?.model ?? '?'}`,
  memoryGiB: Math.round(totalmem() / 2 ** 30),
  redis: redisVersion,
  smoke,
  rounds,
  durationS: duration,
  connections: Number(values.connections),
  httpUsers,
}
console.log(`# quota benchmarks\n\n${Object.entries(setup).map(([k, v]) => `- ${k}: ${v}`).join('\n')}\n`)

const results: Record<string, unknown> = { setup }
// The shared Redis and database, started only when a section needs them (cluster runs its own).
const env: BenchEnv | undefined = [...sections].some((s) => s !== 'cluster') ? await benchEnv(smoke ? 100 : 1000) : undefined
const need = (): BenchEnv => {
  if (env === undefined) throw new Error('benchEnv was not started')
  return env
}
try {
  if (sections.has('http')) {
    // The smoke run only proves the servers start and answer: fewer of them, 500 requests each, no warm-up load.
    const httpLoad = smoke ? { variants: SMOKE_VARIANTS, requestsPerRound: 500, warmupS: 0 } : { warmupS: 2 }
    const load = httpUsers === 'list' ? `each connection walking a list of the ${need().users.length} users` : `${need().users.length} users drawn at random`
    console.log(`## HTTP (autocannon, ${setup.connections} connections, ${load}, each variant its own server process, ${rounds} interleaved rounds × ${smoke ? '500 requests' : `${duration} s`})\n`)
    const http = await runHttp(need(), { rounds, durationS: duration, connections: setup.connections, users: httpUsers, ...httpLoad })
    results.http = http
    console.log(table(
      ['variant', 'req/s', 'ratio to bare', 'p50 ms', 'p97.5 ms', 'p99 ms', 'server CPU µs/req', 'server RSS MiB', 'Redis CPU µs/req', 'Redis cmds/req', 'answers'],
      http.summary.map((s) => [s.variant, fmt(s.rps, 0), fmt(s.ratioToBare, 2), fmt(s.p50), fmt(s.p975), fmt(s.p99),
        fmt(s.serverCpuUsPerReq), fmt(s.serverRssMiB, 0), fmt(s.redisCpuUsPerReq), fmt(s.redisCmdsPerReq, 2), s.statuses]),
    ))
    console.log('\n(medians over rounds; the ratio is taken per round against that round\'s bare run; server CPU and RSS are of the')
    console.log('variant\'s process tree, RSS the highest sample of each round; over-limit variants answer 429 to every request)\n')
  }
  if (sections.has('library')) {
    console.log(`## Library (one process, 1000 in flight, ${rounds} interleaved rounds × ${Math.max(1, duration / 2)} s)\n`)
    const lib = await runLibrary(need(), { rounds, durationS: Math.max(1, duration / 2), inFlight: 1000 })
    results.library = lib
    console.log(table(
      ['variant', 'decisions/s', 'Node CPU µs/decision', 'Redis CPU µs/decision', 'Redis cmds/decision'],
      lib.summary.map((s) => [s.variant, fmt(s.decisionsPerS, 0), fmt(s.nodeCpuUsPerDecision), fmt(s.redisCpuUsPerDecision), fmt(s.redisCmdsPerDecision, 2)]),
    ))
    console.log(`\nquota / rate-limiter-flexible decisions/s: ${fmt(lib.ratio, 2)}×`)
    console.log(`quota embedded / quota on Redis decisions/s: ${fmt(lib.embeddedRatio, 2)}×\n`)
  }
  if (sections.has('flusher')) {
    const users = smoke ? 2000 : 100_000
    console.log(`## Flusher (${users} dirty user-days -> daily_usage)\n`)
    const flush = await runFlusherBench(need(), users)
    results.flusher = flush
    console.log(table(['user-days', 'batch size', 'seconds', 'rows/s'], [[flush.users, flush.batchSize, fmt(flush.seconds, 2), fmt(flush.rowsPerS, 0)]]))
    console.log('')
  }
  if (sections.has('memory')) {
    const users = smoke ? 2000 : 100_000
    console.log(`## Memory (${users} active user-days: 3 daily metrics + storage)\n`)
    const mem = await runMemory(need(), users)
    results.memory = mem
    console.log(table(['user-days', 'bytes per user-day (used_memory delta)', 'MEMORY USAGE of one shard-day hash', 'its users', 'its encoding'],
      [[mem.users, fmt(mem.bytesPerUserDay, 0), mem.shardDayBytes, mem.shardDayUsers, mem.shardDayEncoding]]))
    console.log('')
  }
  if (sections.has('midnight')) {
    const users = smoke ? 2000 : 100_000
    console.log(`## Midnight (${users} active users cross 00:00Z; 50 in flight)\n`)
    const m = await runMidnight(need(), users, smoke ? 0.5 : 3)
    results.midnight = m
    console.log(table(['users', 'p50 before ms', 'p99 before ms', 'p50 during ms', 'p99 during ms', 'p99 ratio', 'close-day ms'],
      [[m.users, fmt(m.p50BeforeMs, 2), fmt(m.p99BeforeMs, 2), fmt(m.p50DuringMs, 2), fmt(m.p99DuringMs, 2), fmt(m.ratio, 2), fmt(m.closeDayMs, 0)]]))
    console.log('')
  }
  if (sections.has('cluster')) {
    const users = smoke ? 1000 : 10_000
    console.log(`## Cluster (RedisCounterStore.decide, consume of 1 api_call for one of ${users} users drawn at random, 1000 in flight from`)
    console.log(`one process; a cluster of 1 master and one of 3 masters, no replicas, both up, ${rounds} interleaved rounds × ${duration} s;`)
    console.log('control: the 3-master cluster with the users of one master only, and that master\'s part of the in-flight decisions)\n')
    const c = await runCluster({ rounds, durationS: duration, inFlight: 1000, users, warmupS: smoke ? 0.3 : 1, idleS: smoke ? 0.5 : 2 })
    results.cluster = c
    const control = (s: { variant: string }): boolean => s.variant === CONTROL
    console.log(table(
      ['configuration', 'decisions/s', 'Node CPU µs/decision', 'Redis CPU µs/decision (all masters)', 'highest Redis CPU µs/decision of a master', 'same, less idle', 'max/min share'],
      c.summary.map((s) => [s.variant, fmt(s.decisionsPerS, 0), fmt(s.nodeCpuUsPerDecision), fmt(s.redisCpuUsPerDecision), fmt(s.maxMasterCpuUsPerDecision),
        fmt(s.maxMasterCpuUsPerDecisionLessIdle), control(s) ? '—' : fmt(s.shareRatio, 3)]),
    ))
    console.log('')
    console.log(table(
      ['configuration', 'master', 'slots', 'share of decisions', 'share of keyspace lookups (server)', 'Redis CPU µs/decision', 'idle CPU ms/s', 'Redis CPU µs/decision less idle'],
      c.summary.flatMap((s) => s.perMaster.map((m) => [s.variant, `:${m.port}`, m.slots, `${fmt(m.share * 100)} %`, `${fmt(m.keyspaceShare * 100)} %`,
        fmt(m.redisCpuUsPerDecision), fmt(m.idleCpuMsPerS, 2), fmt(m.redisCpuUsPerDecisionLessIdle)])),
    ))
    console.log('')
    console.log(table(
      ['configuration', 'master', 'Redis CPU µs/decision: user', 'sys', 'Redis cmds/decision', 'decisions per EVALSHA', 'decisions per socket read', 'decisions per wake-up', 'preemptions per 1000 decisions'],
      c.summary.flatMap((s) => s.perMaster.map((m) => [s.variant, `:${m.port}`, fmt(m.redisCpuUsPerDecision - m.redisSysUsPerDecision), fmt(m.redisSysUsPerDecision),
        fmt(m.commandsPerDecision, 2), fmt(m.decisionsPerCall, 2),
        fmt(m.decisionsPerRead, 1), fmt(m.decisionsPerWakeup, 1), fmt(m.preemptionsPer1000, 2)])),
    ))
    const three = c.summary.find((s) => s.variant === THREE_MASTERS)
    console.log(`\n3 masters / 1 master decisions/s: ${fmt(c.decisionsPerSRatio, 2)}×`)
    console.log(`3 masters / 1 master, highest Redis CPU µs per decision of a master: ${fmt(c.maxMasterCpuRatio, 2)}× (less idle: ${fmt(c.maxMasterCpuLessIdleRatio, 2)}×)`)
    console.log(`control (one master of 3 loaded, ${c.inFlight[CONTROL] ?? '?'} in flight) / 1 master, its Redis CPU µs per decision: ${fmt(c.controlCpuRatio, 2)}× (less idle: ${fmt(c.controlCpuLessIdleRatio, 2)}×)`)
    console.log(`3 masters: shares balanced within 15 %: ${three !== undefined && three.shareRatio <= 1.15 ? 'yes' : 'no'} (max/min ${fmt(three?.shareRatio ?? Number.NaN, 3)})`)
    console.log(`3 masters: Redis CPU per decision per master did not grow over 1 master's: ${c.maxMasterCpuRatio <= 1 ? 'yes' : 'no'}`)
    console.log('(medians over rounds; ratios taken per round, then the median. A master\'s decisions are counted by this')
    console.log('process: each decision\'s user -> bucket (hash tag) -> slot -> the master serving it (CLUSTER SLOTS); the share of')
    console.log('keyspace lookups (INFO stats keyspace_hits + misses) is the servers\' own count of the same split. A master\'s Redis CPU')
    console.log('is its INFO cpu used_cpu_user + used_cpu_sys delta over the round divided by the decisions it ran. That delta')
    console.log(`includes the master's cron and cluster-bus work: its idle CPU, measured over ${smoke ? 0.5 : 2} s with no load after the warm-up, is`)
    console.log('taken out over the round\'s seconds; user and sys: used_cpu_user and used_cpu_sys apart. Redis cmds: every')
    console.log('command INFO commandstats counts, those run inside scripts included; socket reads: INFO stats total_reads_processed;')
    console.log('wake-ups and preemptions: the redis-server process\' voluntary and nonvoluntary context switches, /proc/<pid>/status)\n')
  }
} finally {
  await env?.teardown.run()
}
mkdirSync('bench/results', { recursive: true })
const file = `bench/results/${smoke ? 'smoke' : 'run'}-${setup.date.replace(/[:.]/g, '-')}.json`
writeFileSync(file, JSON.stringify(results, null, 2))
console.log(`results: ${file}`)

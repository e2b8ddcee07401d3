/**
 * npm run bench — every benchmark section, printed as tables and saved as JSON under bench/results/.
 *   --smoke            a short run of each section (npm test runs it so the scripts never rot)
 *   --only a,b         sections: http, library, flusher, memory, midnight
 *   --rounds N --duration S --connections N
 *   --users list|random  how HTTP requests pick their user (http.ts: the issue's list by default)
 * Services: a throwaway redis-server and a fresh database on the local Postgres, removed at the end.
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { parseArgs } from 'node:util'
import { benchEnv } from './env.ts'
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
const sections = new Set((values.only ?? 'http,library,flusher,memory,midnight').split(','))
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
const env = await benchEnv(smoke ? 100 : 1000)
try {
  if (sections.has('http')) {
    // The smoke run only proves the servers start and answer: fewer of them, 500 requests each, no warm-up load.
    const httpLoad = smoke ? { variants: SMOKE_VARIANTS, requestsPerRound: 500, warmupS: 0 } : { warmupS: 2 }
    const load = httpUsers === 'list' ? `each connection walking a list of the ${env.users.length} users` : `${env.users.length} users drawn at random`
    console.log(`## HTTP (autocannon, ${setup.connections} connections, ${load}, each variant its own server process, ${rounds} interleaved rounds × ${smoke ? '500 requests' : `${duration} s`})\n`)
    const http = await runHttp(env, { rounds, durationS: duration, connections: setup.connections, users: httpUsers, ...httpLoad })
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
    const lib = await runLibrary(env, { rounds, durationS: Math.max(1, duration / 2), inFlight: 1000 })
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
    const flush = await runFlusherBench(env, users)
    results.flusher = flush
    console.log(table(['user-days', 'batch size', 'seconds', 'rows/s'], [[flush.users, flush.batchSize, fmt(flush.seconds, 2), fmt(flush.rowsPerS, 0)]]))
    console.log('')
  }
  if (sections.has('memory')) {
    const users = smoke ? 2000 : 100_000
    console.log(`## Memory (${users} active user-days: 3 daily metrics + storage)\n`)
    const mem = await runMemory(env, users)
    results.memory = mem
    console.log(table(['user-days', 'bytes per user-day (used_memory delta)', 'MEMORY USAGE of one shard-day hash', 'its users', 'its encoding'],
      [[mem.users, fmt(mem.bytesPerUserDay, 0), mem.shardDayBytes, mem.shardDayUsers, mem.shardDayEncoding]]))
    console.log('')
  }
  if (sections.has('midnight')) {
    const users = smoke ? 2000 : 100_000
    console.log(`## Midnight (${users} active users cross 00:00Z; 50 in flight)\n`)
    const m = await runMidnight(env, users, smoke ? 0.5 : 3)
    results.midnight = m
    console.log(table(['users', 'p50 before ms', 'p99 before ms', 'p50 during ms', 'p99 during ms', 'p99 ratio', 'close-day ms'],
      [[m.users, fmt(m.p50BeforeMs, 2), fmt(m.p99BeforeMs, 2), fmt(m.p50DuringMs, 2), fmt(m.p99DuringMs, 2), fmt(m.ratio, 2), fmt(m.closeDayMs, 0)]]))
    console.log('')
  }
} finally {
  await env.teardown.run()
}
mkdirSync('bench/results', { recursive: true })
const file = `bench/results/${smoke ? 'smoke' : 'run'}-${setup.date.replace(/[:.]/g, '-')}.json`
writeFileSync(file, JSON.stringify(results, null, 2))
console.log(`results: ${file}`)

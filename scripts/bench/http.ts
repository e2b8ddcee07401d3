/**
 * HTTP benchmark: the same Fastify process serves a bare route, quota's guarded route, and the two
 * peers; autocannon drives each in interleaved rounds (A B C D E, repeated), so machine noise hits
 * every variant alike. Reported per variant: req/s and its per-round ratio to bare, latency
 * percentiles, server CPU µs per request (from /proc of the server process), Redis CPU µs and
 * commands per request (INFO cpu / commandstats deltas).
 */
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'
import { Redis } from 'ioredis'
import { freePort } from '../../test/helpers/net.ts'
import { median, processCpuSeconds, redisCounters } from './env.ts'
import type { BenchEnv } from './env.ts'

export interface HttpOptions {
  rounds: number
  durationS: number
  connections: number
}

export const VARIANTS = [
  { name: 'bare', path: '/bare', over: false },
  { name: 'quota', path: '/quota', over: false },
  { name: 'quota + metrics', path: '/quota-metrics', over: false },
  { name: 'quota embedded', path: '/quota-embedded', over: false },
  { name: '@fastify/rate-limit', path: '/frl', over: false },
  { name: 'rate-limiter-flexible', path: '/rlf', over: false },
  { name: 'quota (over limit)', path: '/quota', over: true },
] as const

export interface RoundResult {
  variant: string
  round: number
  rps: number
  ratioToBare: number
  p50: number
  p975: number
  p99: number
  serverCpuUsPerReq: number
  redisCpuUsPerReq: number
  redisCmdsPerReq: number
  non2xx: number
  errors: number
}

/** Medians over the rounds of one variant. */
export type VariantSummary = Omit<RoundResult, 'round' | 'non2xx' | 'errors'> & { statuses: string }


/**
 * One request template whose user is drawn at random for every request. A plain list of requests
 * would have every connection walk it in lockstep from the first user, so each user would be
 * asked by all connections at once: a hot-key storm, not 1000 users spending side by side.
 */
export function randomUsers(path: string, users: string[]): autocannon.Request[] {
  return [{
    method: 'GET',
    path,
    setupRequest: (request) => ({
      ...request,
      headers: { ...request.headers, 'x-user': users[Math.floor(Math.random() * users.length)] as string },
    }),
  }]
}

export async function runHttp(env: BenchEnv, options: HttpOptions): Promise<{ rounds: RoundResult[]; summary: VariantSummary[] }> {
  const port = await freePort()
  const server = fork(fileURLToPath(new URL('./http-server.ts', import.meta.url)), [], {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, PORT: String(port), REDIS_URL: env.redis.url, DATABASE_URL: env.db.url, PREFIX: env.prefix },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  await new Promise<void>((resolve, reject) => {
    server.once('message', () => resolve())
    server.once('exit', (code) => reject(new Error(`bench server exited with ${code}`)))
  })
  const redis = new Redis(env.redis.url)
  const rounds: RoundResult[] = []
  try {
    const requestsFor = (path: string, users: string[]) => randomUsers(path, users)
    // Warm-up: every user once on every variant (tiers cached, each user's counters created in
    // Redis), then a second of load for the JIT.
    for (const v of VARIANTS) {
      const users = v.over ? env.overUsers : env.users
      const everyUser = users.map((u) => ({ method: 'GET' as const, path: v.path, headers: { 'x-user': u } }))
      await autocannon({ url: `http://127.0.0.1:${port}`, connections: 1, amount: users.length, requests: everyUser })
      await autocannon({ url: `http://127.0.0.1:${port}`, connections: 20, duration: 1, requests: requestsFor(v.path, users) })
    }
    for (let round = 1; round <= options.rounds; round++) {
      let bareRps = Number.NaN
      for (const v of VARIANTS) {
        const cpu0 = processCpuSeconds(server.pid as number)
        const r0 = await redisCounters(redis)
        const result = await autocannon({
          url: `http://127.0.0.1:${port}`,
          connections: options.connections,
          duration: options.durationS,
          requests: requestsFor(v.path, v.over ? env.overUsers : env.users),
        })
        const cpu1 = processCpuSeconds(server.pid as number)
        const r1 = await redisCounters(redis)
        const n = result.requests.total
        const rps = n / options.durationS
        if (v.name === 'bare') bareRps = rps
        rounds.push({
          variant: v.name,
          round,
          rps,
          ratioToBare: rps / bareRps,
          p50: result.latency.p50,
          p975: result.latency.p97_5,
          p99: result.latency.p99,
          serverCpuUsPerReq: ((cpu1 - cpu0) * 1e6) / n,
          // Two INFO calls per round are included: negligible against tens of thousands of requests.
          redisCpuUsPerReq: ((r1.cpu - r0.cpu) * 1e6) / n,
          redisCmdsPerReq: (r1.calls - r0.calls - 2) / n,
          non2xx: result.non2xx,
          errors: result.errors,
        })
      }
    }
  } finally {
    redis.disconnect()
    server.kill('SIGTERM')
    await new Promise((resolve) => server.once('exit', resolve))
  }
  const summary = VARIANTS.map((v) => {
    const rs = rounds.filter((r) => r.variant === v.name)
    return {
      variant: v.name,
      rps: median(rs.map((r) => r.rps)),
      ratioToBare: median(rs.map((r) => r.ratioToBare)),
      p50: median(rs.map((r) => r.p50)),
      p975: median(rs.map((r) => r.p975)),
      p99: median(rs.map((r) => r.p99)),
      serverCpuUsPerReq: median(rs.map((r) => r.serverCpuUsPerReq)),
      redisCpuUsPerReq: median(rs.map((r) => r.redisCpuUsPerReq)),
      redisCmdsPerReq: median(rs.map((r) => r.redisCmdsPerReq)),
      statuses: `${rs.reduce((a, r) => a + r.non2xx, 0)} non-2xx, ${rs.reduce((a, r) => a + r.errors, 0)} errors`,
    }
  })
  return { rounds, summary }
}

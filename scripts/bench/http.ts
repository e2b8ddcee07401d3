/**
 * HTTP benchmark (issue 13, "an honest bench"): every limiter measured as users deploy it.
 *
 * Servers. Each variant is its own Node process (http-process.ts, http-servers/): quota's plugin
 * with its flusher, leader election and midnight scheduler running; the peers as their READMEs
 * recommend; a bare route; and "plain Lua", one check-and-increment script on an autopipelining
 * client — the floor of any Redis limiter. All servers start together at the beginning and stay
 * up for the run (simpler than one start per round, and each keeps its warm JIT and caches), but
 * only one is under load at a time. The idle ones cost little: quota's engines each wake every
 * second (flusher, scheduler), a few Redis commands a second against thousands a round. Each
 * variant has its own Redis key prefix, so no other process's flusher does its work.
 *
 * Load. autocannon, `connections` connections, each walking a list of one request per user
 * (`x-user` header) and starting over at its end. All connections start at user 0 and move in
 * near lockstep, so each user is asked by many connections at about the same moment: what the
 * issue measured (it found that quota's deny cache does not fire under this load), kept as the
 * default. `users: 'random'` draws each request's user at random instead (1000 users spending
 * side by side). Over-limit variants (quota and both peers): limit 1 and every user spent once
 * in the warm-up, so every measured answer is a 429 from the limiter's own state.
 *
 * Rounds. Warm-up first: every user once on every variant (tiers cached, counters created, the
 * over-limit users spent), then a short load of the measured kind. Then `rounds` rounds, each
 * running every variant once in turn, so machine noise hits them alike; the ratio to bare is
 * taken within each round. Per variant and round: req/s, latency percentiles, CPU µs per
 * request of the server's whole process tree (/proc utime + stime, PGlite included: it runs in
 * the embedded server's process), the tree's highest RSS during the round (sampled every 250
 * ms), Redis CPU µs and commands per request (INFO cpu / commandstats deltas). Summaries are
 * medians over rounds.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import autocannon from 'autocannon'
import { Redis } from 'ioredis'
import { median, redisCounters } from './env.ts'
import type { BenchEnv } from './env.ts'
import { startServer } from './http-process.ts'
import type { BenchServer } from './http-process.ts'
import { VARIANTS } from './http-variants.ts'
import type { Variant } from './http-variants.ts'
import { sampleTreeRss, treeCpuSeconds } from './process-tree.ts'

export type UserMode = 'list' | 'random'

export interface HttpOptions {
  rounds: number
  durationS: number
  connections: number
  /**
   * When set, each measured run sends this many requests instead of lasting `durationS`: the
   * smoke run, which only proves every server starts and answers, spends its CPU on nothing else.
   */
  requestsPerRound?: number
  /** Load of the measured kind on each variant before the rounds, seconds (0: only every user once). */
  warmupS: number
  /** How requests pick their user. @default 'list' */
  users?: UserMode
  /** Names of the variants to run, bare among them. @default every variant */
  variants?: readonly string[]
}

export interface RoundResult {
  variant: string
  round: number
  rps: number
  ratioToBare: number
  p50: number
  p975: number
  p99: number
  serverCpuUsPerReq: number
  serverRssMiB: number
  redisCpuUsPerReq: number
  redisCmdsPerReq: number
  non2xx: number
  errors: number
}

/** Medians over the rounds of one variant. */
export type VariantSummary = Omit<RoundResult, 'round' | 'non2xx' | 'errors'> & { statuses: string }

/** One request per user, in order: each connection walks the list (see the header). */
export function userList(users: string[]): autocannon.Request[] {
  return users.map((user) => ({ method: 'GET', path: '/', headers: { 'x-user': user } }))
}

/** One request template whose user is drawn at random for every request. */
export function randomUsers(users: string[]): autocannon.Request[] {
  return [{
    method: 'GET',
    path: '/',
    setupRequest: (request) => ({
      ...request,
      headers: { ...request.headers, 'x-user': users[Math.floor(Math.random() * users.length)] as string },
    }),
  }]
}

/**
 * Asks every user exactly once: a connection per tenth of the users, each walking its own list
 * once (one connection on a shared list would take a thousand round trips in a row).
 */
async function everyUserOnce(url: string, users: string[]): Promise<void> {
  const slice = Math.ceil(users.length / 10)
  const slices = Array.from({ length: Math.ceil(users.length / slice) }, (_, i) => users.slice(i * slice, (i + 1) * slice))
  await Promise.all(slices.map((part) => autocannon({ url, connections: 1, amount: part.length, requests: userList(part) })))
}

/**
 * Starts every variant's server at once: a quota engine or PGlite takes seconds to start, and
 * one after another they would add up while the warm-up could already run on those listening.
 * Each promise is marked handled here; whoever awaits it still sees its failure.
 */
function startServers(env: BenchEnv, variants: readonly Variant[]): Promise<BenchServer>[] {
  const dataDir = mkdtempSync(join(tmpdir(), 'quota-bench-embedded-'))
  env.teardown.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  const starting = variants.map((v, i) => startServer(v.server, {
    REDIS_URL: env.redis.url,
    DATABASE_URL: env.db.url,
    PREFIX: `${env.prefix}v${i}:`,
    OVER: v.over ? '1' : '0',
    DATA_DIR: dataDir,
    USERS: String(env.users.length),
  }))
  for (const s of starting) s.catch(() => {})
  return starting
}

/** Stops every server that started (and waits for those still starting). */
async function stopServers(starting: Promise<BenchServer>[]): Promise<void> {
  const settled = await Promise.allSettled(starting)
  await Promise.all(settled.map((s) => (s.status === 'fulfilled' ? s.value.stop() : undefined)))
}

export async function runHttp(env: BenchEnv, options: HttpOptions): Promise<{ rounds: RoundResult[]; summary: VariantSummary[] }> {
  const usersOf = (v: Variant) => (v.over ? env.overUsers : env.users)
  const requestsFor = (v: Variant) => (options.users === 'random' ? randomUsers(usersOf(v)) : userList(usersOf(v)))
  const unknown = options.variants?.filter((name) => !VARIANTS.some((v) => v.name === name)) ?? []
  if (unknown.length > 0) throw new Error(`unknown HTTP variants: ${unknown.join(', ')}`)
  const variants = VARIANTS.filter((v) => options.variants?.includes(v.name) ?? true)
  if (variants[0]?.name !== 'bare') throw new Error('the HTTP bench needs the bare variant: ratios are taken against it')
  const starting = startServers(env, variants)
  const redis = new Redis(env.redis.url)
  const rounds: RoundResult[] = []
  try {
    // Servers are warmed in the order they listen, while the slower ones (embedded) still start.
    const waiting = new Map(starting.map((server, i) => [i, server.then(() => i)]))
    while (waiting.size > 0) {
      const i = await Promise.race(waiting.values())
      waiting.delete(i)
      const v = variants[i] as Variant
      const { url } = await (starting[i] as Promise<BenchServer>)
      await everyUserOnce(url, usersOf(v))
      if (options.warmupS > 0) await autocannon({ url, connections: options.connections, duration: options.warmupS, requests: requestsFor(v) })
    }
    const servers = await Promise.all(starting)
    for (let round = 1; round <= options.rounds; round++) {
      let bareRps = Number.NaN
      for (const [i, v] of variants.entries()) {
        const server = servers[i] as BenchServer
        const cpu0 = treeCpuSeconds(server.pid)
        const r0 = await redisCounters(redis)
        const rss = sampleTreeRss(server.pid)
        const result = await autocannon({
          url: server.url,
          connections: options.connections,
          ...(options.requestsPerRound === undefined ? { duration: options.durationS } : { amount: options.requestsPerRound }),
          requests: requestsFor(v),
        })
        const rssBytes = rss.stop()
        const cpu1 = treeCpuSeconds(server.pid)
        const r1 = await redisCounters(redis)
        const n = result.requests.total
        // Over the run's measured length (its set duration, or how long the smoke's requests took).
        const rps = n / result.duration
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
          serverRssMiB: rssBytes / 2 ** 20,
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
    await stopServers(starting)
  }
  return { rounds, summary: summarise(variants, rounds) }
}

function summarise(variants: readonly Variant[], rounds: RoundResult[]): VariantSummary[] {
  return variants.map((v) => {
    const rs = rounds.filter((r) => r.variant === v.name)
    const med = (pick: (r: RoundResult) => number) => median(rs.map(pick))
    return {
      variant: v.name,
      rps: med((r) => r.rps),
      ratioToBare: med((r) => r.ratioToBare),
      p50: med((r) => r.p50),
      p975: med((r) => r.p975),
      p99: med((r) => r.p99),
      serverCpuUsPerReq: med((r) => r.serverCpuUsPerReq),
      serverRssMiB: med((r) => r.serverRssMiB),
      redisCpuUsPerReq: med((r) => r.redisCpuUsPerReq),
      redisCmdsPerReq: med((r) => r.redisCmdsPerReq),
      statuses: `${rs.reduce((a, r) => a + r.non2xx, 0)} non-2xx, ${rs.reduce((a, r) => a + r.errors, 0)} errors`,
    }
  })
}

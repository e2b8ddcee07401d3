/**
 * Quick throughput check: decisions per second from ONE process, through the real UsageService
 * (tier cache, fixed-point validation, one EVALSHA per decision), with ~1000 decisions in flight
 * for ~3 s. Not a test and not the full benchmark: a sanity number.
 *
 *   node --import tsx scripts/bench/quick-decisions.ts [--seconds 3] [--inflight 1000] [--users 2000]
 *
 * Uses a throwaway redis-server (needs `redis-server` on PATH) and a throwaway Postgres database on
 * TEST_DATABASE_URL's server (default postgres://postgres@127.0.0.1:5432/postgres); both are
 * removed at the end.
 */
import { randomUUID } from 'node:crypto'
import { cpus, loadavg } from 'node:os'
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { createTestDatabase } from '../../test/helpers/database.ts'
import { startRedisServer } from '../../test/helpers/redis-server.ts'
import { createUsageHarness } from '../../test/helpers/usage.ts'
import { UsageUnavailableError } from '../../src/usage/errors.ts'

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    inflight: { type: 'string', default: '1000' },
    users: { type: 'string', default: '2000' },
  },
})
const seconds = Number(values.seconds)
const inflight = Number(values.inflight)
const userCount = Number(values.users)

const teardowns: (() => unknown)[] = []
const scope = { teardown: (fn: () => unknown) => void teardowns.push(fn) }

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? Number.NaN
}

try {
  const server = await startRedisServer(scope)
  const db = await createTestDatabase(scope)
  const h = await createUsageHarness(scope, { redisUrl: server.url, db, now: new Date().toISOString() })

  const users = Array.from({ length: userCount }, () => randomUUID())
  await db.pool.query(
    `INSERT INTO users (id, username, tier) SELECT u, u::text, 'pro' FROM unnest($1::uuid[]) AS u`,
    [users],
  )
  // Warm: every user's tier cached and Redis state seeded, as in steady state. Small batches: a
  // seed waits for Postgres, and that wait counts against the decision's Redis deadline.
  for (let i = 0; i < users.length; i += 20) {
    await Promise.all(users.slice(i, i + 20).map((u) => h.service.status(u)))
  }

  let decisions = 0
  let allowed = 0
  let unavailable = 0
  const latencies = new Float64Array(20_000_000)
  let n = 0
  const started = performance.now()
  const until = started + seconds * 1000
  const worker = async (): Promise<void> => {
    while (performance.now() < until) {
      const user = users[Math.floor(Math.random() * users.length)] ?? ''
      const t0 = performance.now()
      try {
        const r = await h.service.consume(user, { api_calls: 1 })
        if (r.allowed) allowed++
      } catch (err) {
        if (!(err instanceof UsageUnavailableError)) throw err
        unavailable++
      }
      if (n < latencies.length) latencies[n++] = performance.now() - t0
      decisions++
    }
  }
  await Promise.all(Array.from({ length: inflight }, worker))
  const elapsed = (performance.now() - started) / 1000
  const sorted = latencies.slice(0, n).sort()

  const inRedis = await Promise.all(users.slice(0, 50).map(async (u) => (await h.service.status(u)).metrics.api_calls.current))
  console.log(JSON.stringify({
    decisions,
    seconds: Number(elapsed.toFixed(2)),
    decisions_per_second: Math.round(decisions / elapsed),
    in_flight: inflight,
    users: userCount,
    allowed,
    unavailable,
    latency_ms: {
      p50: Number(percentile(sorted, 0.5).toFixed(2)),
      p90: Number(percentile(sorted, 0.9).toFixed(2)),
      p99: Number(percentile(sorted, 0.99).toFixed(2)),
      max: Number((sorted[sorted.length - 1] ?? Number.NaN).toFixed(2)),
    },
    sample_counted_first_50_users: inRedis.reduce((a, b) => a + b, 0),
    machine: { cpus: cpus().length, loadavg_1m: Number(loadavg()[0]?.toFixed(2)) },
  }, null, 2))
} finally {
  for (const fn of teardowns.reverse()) await fn()
}

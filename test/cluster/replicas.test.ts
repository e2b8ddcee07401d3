/**
 * Many replicas on one Redis Cluster: three service processes with the same Redis Cluster,
 * Postgres, REDIS_KEY_PREFIX and JWT_SECRET, the load spread over the three (round robin, so every
 * user's requests go to all three at once), users taken to their limit:
 * - exactly one process holds the leader lock (GET /metrics quota_leader 1 on one, 0 on the others);
 * - no user admitted past the limit, although three processes decide for it concurrently;
 * - every process flushed (quota_flush_rows_total > 0 on each: every replica flushes, rows are
 *   version-guarded);
 * - after a SIGTERM to all three (final flushes), daily_usage per user equals the 200s of all
 *   three (plus at most that user's 503s, if any), and equals its count in Redis exactly.
 */
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { mismatches, recordedApiCalls, redisApiCalls } from '../helpers/cluster-totals.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { waitUntil } from '../helpers/net.ts'
import { startRedisCluster } from '../helpers/redis-cluster.ts'
import { startService } from '../helpers/service-process.ts'
import type { ServiceProcess } from '../helpers/service-process.ts'
import { signToken } from '../helpers/tokens.ts'

const LIMIT = 150
const USERS = 20
const LOOPS = 6

interface Outcome { user: string; service: number; status: number }

/** The value of an unlabelled series in a service's GET /metrics (undefined when absent). */
async function metric(service: ServiceProcess, name: string): Promise<number | undefined> {
  const res = await fetch(`${service.baseUrl}/metrics`, { signal: AbortSignal.timeout(5000) })
  const text = await res.text()
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? undefined : Number(line.slice(name.length + 1))
}

t.test('three service processes on one cluster: one leader, every one flushes, exact totals', async (t) => {
  const testStarted = Date.now()
  const cluster = await startRedisCluster(t)
  const db = await createTestDatabase(t)
  await db.pool.query(`INSERT INTO usage_limits (tier, max_deployments_per_day, max_api_calls_per_day, max_compute_hours_per_day, max_storage_gb)
    VALUES ('replicas', 10, ${LIMIT}, 10, 5)`)
  const ids: string[] = Array.from({ length: USERS }, () => randomUUID())
  await db.pool.query("INSERT INTO users (id, username, tier) SELECT u, u::text, 'replicas' FROM unnest($1::uuid[]) AS u", [ids])

  const prefix = `qt:replicas:${process.pid}:`
  const env = {
    DATABASE_URL: db.url, REDIS_URL: undefined, REDIS_CLUSTER_NODES: cluster.env, REDIS_KEY_PREFIX: prefix,
    FLUSH_INTERVAL_MS: '200', USAGE_FAIL_MODE: 'closed',
  }
  const first = await startService(t, env)
  const secret = first.env.JWT_SECRET as string
  const services = [first, await startService(t, { ...env, JWT_SECRET: secret }), await startService(t, { ...env, JWT_SECRET: secret })]
  t.teardown(() => {
    if (!t.passing()) services.forEach((s, i) => t.comment(`--- service ${i} output ---\n${s.output()}`))
  })
  const auth = new Map(ids.map((id) => [id, `Bearer ${signToken({ sub: id, secret, expiresIn: '1h' })}`]))

  const leaders = async (): Promise<number[]> => Promise.all(services.map(async (s) => (await metric(s, 'quota_leader')) ?? -1))
  await waitUntil(async () => (await leaders()).filter((v) => v === 1).length === 1,
    { what: 'one service holding the leader lock', timeoutMs: 15_000, intervalMs: 100 })

  const outcomes: Outcome[] = []
  const maxRequests = USERS * (LIMIT + 200)
  let stop = false
  let nextUser = 0
  let nextService = 0
  const loop = async (): Promise<void> => {
    while (!stop && outcomes.length < maxRequests) {
      const user = ids[nextUser++ % USERS] as string
      const service = nextService++ % services.length
      let status: number
      try {
        const res = await fetch(`${(services[service] as ServiceProcess).baseUrl}/api/usage/consume`, {
          method: 'POST', headers: { authorization: auth.get(user) as string, 'content-type': 'application/json' },
          body: '{"metric":"api_calls"}', signal: AbortSignal.timeout(5000),
        })
        await res.arrayBuffer()
        status = res.status
      } catch {
        status = -1
      }
      outcomes.push({ user, service, status })
      if (status !== 200 && status !== 429) await sleep(2)
    }
  }
  const loadStarted = Date.now()
  const loops = Array.from({ length: LOOPS }, () => loop())
  // The leader is looked at again while the load runs: still exactly one.
  const leaderSamples: number[][] = []
  const reached = await waitUntil(async () => {
    if (leaderSamples.length < 5 && outcomes.length > leaderSamples.length * 1000) leaderSamples.push(await leaders())
    return outcomes.length >= maxRequests || ids.every((id) => outcomes.filter((o) => o.user === id && o.status === 200).length >= LIMIT)
  }, { what: 'every user at the limit', timeoutMs: 60_000, intervalMs: 100 }).then(() => true, (err: Error) => {
    t.comment(err.message)
    return false
  })
  stop = true
  await Promise.all(loops)
  const loadMs = Date.now() - loadStarted
  t.ok(reached, 'every user reached the limit')
  leaderSamples.push(await leaders())
  t.ok(leaderSamples.every((s) => s.filter((v) => v === 1).length === 1 && s.filter((v) => v === 0).length === 2),
    `quota_leader is 1 on exactly one process, 0 on the others, every time it was read (${leaderSamples.map((s) => s.join('')).join(' ')})`)
  const leaderIndex = leaderSamples.at(-1)?.indexOf(1) ?? -1

  const admitted = new Map<string, number>()
  for (const o of outcomes) if (o.status === 200) admitted.set(o.user, (admitted.get(o.user) ?? 0) + 1)
  const over = ids.filter((id) => (admitted.get(id) ?? 0) > LIMIT)
  t.same(over, [], `no user admitted past ${LIMIT}`)
  const errors = outcomes.filter((o) => o.status !== 200 && o.status !== 429)
  t.same([...new Set(errors.map((o) => o.status))].filter((s) => s !== 503), [], 'every answer is 200, 429 or 503')
  const perService = services.map((_, i) => outcomes.filter((o) => o.service === i))
  t.ok(perService.every((list) => list.some((o) => o.status === 200)), 'every process admitted requests')

  // Every process flushed (read before the SIGTERM: its final flush is not in these figures).
  const flushed = await Promise.all(services.map(async (s) => (await metric(s, 'quota_flush_rows_total')) ?? 0))
  t.ok(flushed.every((n) => n > 0), `every process wrote rows to daily_usage (quota_flush_rows_total ${flushed.join(', ')})`)

  for (const s of services) s.signal('SIGTERM')
  const exits = await Promise.all(services.map((s) => s.waitForExit(15_000)))
  t.same(exits, services.map(() => ({ code: 0, signal: null })), 'SIGTERM: every process flushed and exited 0')

  const { byUser: recorded, userDays } = await recordedApiCalls(db.pool, ids)
  const errorsBy = new Map<string, number>()
  for (const o of errors) errorsBy.set(o.user, (errorsBy.get(o.user) ?? 0) + 1)
  t.same(mismatches(ids, recorded, admitted, errorsBy), [], 'daily_usage per user = its 200s over the three processes, plus at most its 503s')

  const inRedis = await redisApiCalls(t, cluster, prefix, userDays)
  const differ = ids.filter((id) => (inRedis.get(id) ?? 0) !== (recorded.get(id) ?? 0))
    .map((id) => ({ id, redis: inRedis.get(id) ?? 0, daily_usage: recorded.get(id) ?? 0 }))
  t.same(differ, [], 'daily_usage per user = its count in Redis, exactly')

  const sum = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0)
  t.comment(`${outcomes.length} requests (${USERS} users, limit ${LIMIT}) in ${(loadMs / 1000).toFixed(1)} s; ` +
    `per process requests/admitted: ${perService.map((list) => `${list.length}/${list.filter((o) => o.status === 200).length}`).join(', ')}; ` +
    `${sum(admitted)} admitted, ${errors.length} 503s`)
  t.comment(`leader: process ${leaderIndex}; quota_flush_rows_total before SIGTERM: ${flushed.join(', ')}`)
  t.comment(`daily_usage ${sum(recorded)} = Redis ${sum(inRedis)} = admitted ${sum(admitted)} + ${sum(recorded) - sum(admitted)} counted without a 200; ` +
    `test ${((Date.now() - testStarted) / 1000).toFixed(1)} s`)
})

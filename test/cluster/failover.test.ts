/**
 * A master of the Redis Cluster is killed (SIGKILL) under load. With REDIS_WAIT_REPLICAS=1 every
 * admitted decision was on a replica before its 200, so the promoted replica holds all of them;
 * with min-replicas-to-write 1 on the nodes, the promoted replica refuses writes until it has a
 * replica again (the killed node, restarted, rejoins as one), so nothing it takes can be lost:
 * - no over-admission: no user is ever admitted past the limit, during or after the failover;
 * - answers during the failover follow the fail mode (closed: 503) within the command timeout
 *   (plus WAIT's share), never hang;
 * - once the replica has taken over, decisions for its slots succeed again;
 * - after a SIGTERM (final flush), daily_usage holds every admitted request, and at most the
 *   503s whose decision ran on the master before it died (counted, never admitted) on top.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { slotOf } from '../../src/counters/redis/keys.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { waitUntil } from '../helpers/net.ts'
import { startRedisCluster } from '../helpers/redis-cluster.ts'
import { startService } from '../helpers/service-process.ts'
import { signToken } from '../helpers/tokens.ts'
import calculateSlot from 'cluster-key-slot'

const LIMIT = 150
const USERS = 24
const COMMAND_TIMEOUT_MS = 250

interface Outcome { user: string; status: number; ms: number; at: number }

t.test('a master killed under load: its replica takes over, no over-admission, exact totals', async (t) => {
  const cluster = await startRedisCluster(t, { nodeTimeoutMs: 1000, minReplicasToWrite: 1 })
  const db = await createTestDatabase(t)
  await db.pool.query(`INSERT INTO usage_limits (tier, max_deployments_per_day, max_api_calls_per_day, max_compute_hours_per_day, max_storage_gb)
    VALUES ('failover', 10, ${LIMIT}, 10, 5)`)
  const ids: string[] = Array.from({ length: USERS }, () => randomUUID())
  await db.pool.query("INSERT INTO users (id, username, tier) SELECT u, u::text, 'failover' FROM unnest($1::uuid[]) AS u", [ids])
  const prefix = `qt:failover:${process.pid}:`
  const service = await startService(t, {
    DATABASE_URL: db.url, REDIS_URL: undefined, REDIS_CLUSTER_NODES: cluster.env, REDIS_KEY_PREFIX: prefix,
    REDIS_WAIT_REPLICAS: '1', REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS), FLUSH_INTERVAL_MS: '200', USAGE_FAIL_MODE: 'closed',
  })
  const secret = service.env.JWT_SECRET as string
  const auth = new Map(ids.map((id) => [id, `Bearer ${signToken({ sub: id as `${string}-${string}-${string}-${string}-${string}`, secret, expiresIn: '1h' })}`]))

  // The master serving the first user's bucket dies; users of its slots are the ones that matter.
  const victimSlot = calculateSlot(`${prefix}{${slotOf(ids[0] as string).bucket}}`)
  const victim = await cluster.masterOf(victimSlot)

  const outcomes: Outcome[] = []
  let stop = false
  let next = 0
  const loop = async (): Promise<void> => {
    while (!stop && outcomes.length < USERS * (LIMIT + 60)) {
      const user = ids[next++ % USERS] as string
      const started = performance.now()
      let status: number
      try {
        const res = await fetch(`${service.baseUrl}/api/usage/consume`, {
          method: 'POST', headers: { authorization: auth.get(user) as string, 'content-type': 'application/json' },
          body: '{"metric":"api_calls"}', signal: AbortSignal.timeout(5000),
        })
        await res.arrayBuffer()
        status = res.status
      } catch {
        status = -1
      }
      outcomes.push({ user, status, ms: performance.now() - started, at: Date.now() })
      if (status !== 200) await sleep(2)
    }
  }
  const loops = Array.from({ length: 6 }, () => loop())
  await waitUntil(async () => outcomes.filter((o) => o.status === 200).length >= USERS * LIMIT * 0.3,
    { what: 'a third of the quota admitted', timeoutMs: 60_000, intervalMs: 20 })
  const killedAt = Date.now()
  await victim.kill('SIGKILL')
  await cluster.waitHealthy(30_000)
  const promotedAt = Date.now()
  // The dead master comes back, learns from the cluster it is a replica now, and syncs.
  await victim.start()
  await cluster.waitHealthy(30_000)
  const healedAt = Date.now()
  // Every user reaches the limit after the failover: keep going until answers are all 429 or done.
  await waitUntil(async () => outcomes.length >= USERS * (LIMIT + 60) || ids.every((id) =>
    outcomes.filter((o) => o.user === id && o.status === 200).length >= LIMIT), { what: 'every user at the limit', timeoutMs: 60_000, intervalMs: 50 })
    .catch((err: Error) => {
      const late = outcomes.filter((o) => o.at > healedAt)
      const counts: Record<string, number> = {}
      for (const o of late) counts[o.status] = (counts[o.status] ?? 0) + 1
      t.comment(`after healing: ${JSON.stringify(counts)}; ${err.message}`)
    })
  stop = true
  await Promise.all(loops)

  const admitted = new Map<string, number>()
  for (const o of outcomes) if (o.status === 200) admitted.set(o.user, (admitted.get(o.user) ?? 0) + 1)
  const over = ids.filter((id) => (admitted.get(id) ?? 0) > LIMIT)
  t.same(over, [], `no user admitted past ${LIMIT}`)
  const errors = outcomes.filter((o) => o.status !== 200 && o.status !== 429)
  t.ok(errors.every((o) => o.status === 503), `errors during the failover are 503s (fail mode closed): ${[...new Set(errors.map((o) => o.status))].join(', ') || 'none'}`)
  const slowest = Math.max(0, ...errors.map((o) => o.ms))
  t.ok(slowest < 2000, `every 503 came within the command timeout and WAIT's share, plus the machine's load (slowest ${Math.round(slowest)} ms)`)
  const afterHeal = outcomes.filter((o) => o.at > healedAt + 1000)
  t.ok(afterHeal.length > 0 && afterHeal.every((o) => o.status === 200 || o.status === 429), 'after the failover every answer is a decision again')

  service.signal('SIGTERM')
  t.same(await service.waitForExit(15_000), { code: 0, signal: null }, 'SIGTERM: final flush, exit 0')
  const { rows } = await db.pool.query<{ id: string; n: number }>(
    'SELECT user_id::text AS id, api_calls AS n FROM daily_usage WHERE user_id = ANY($1::uuid[])', [ids])
  const recorded = new Map(rows.map((r) => [r.id, r.n]))
  const errorsBy = new Map<string, number>()
  for (const o of errors) errorsBy.set(o.user, (errorsBy.get(o.user) ?? 0) + 1)
  const wrong = ids.filter((id) => {
    const n = recorded.get(id) ?? 0
    return n < (admitted.get(id) ?? 0) || n > Math.min(LIMIT, (admitted.get(id) ?? 0) + (errorsBy.get(id) ?? 0))
  })
  t.same(wrong, [], 'daily_usage per user: every admitted request, never past the limit, at most the 503s on top')
  t.comment(`${outcomes.length} requests; replica promoted ${Math.round((promotedAt - killedAt) / 100) / 10} s after the kill, ` +
    `writable again ${Math.round((healedAt - killedAt) / 100) / 10} s after it; ${errors.length} 503s, ` +
    `slowest 503 ${Math.round(slowest)} ms; recorded ${[...recorded.values()].reduce((a, b) => a + b, 0)} = admitted ` +
    `${[...admitted.values()].reduce((a, b) => a + b, 0)} + ${[...recorded.values()].reduce((a, b) => a + b, 0) - [...admitted.values()].reduce((a, b) => a + b, 0)} counted without a 200`)
  if (!t.passing()) t.comment(service.output())
})

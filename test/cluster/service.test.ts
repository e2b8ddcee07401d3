/**
 * The service in mode cluster (REDIS_CLUSTER_NODES), end to end over HTTP on a real local Redis
 * Cluster (3 masters + 3 replicas): 300 concurrent consumes at the limit boundary admit exactly
 * the limit, decisions spread over every master, daily_usage equals the counters after a flush,
 * and with REDIS_WAIT_REPLICAS=1 decisions still flow (every master has a replica).
 */
import { execFileSync } from 'node:child_process'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { startRedisCluster } from '../helpers/redis-cluster.ts'

const cluster = await startRedisCluster(t)
// A loaded CI machine may take longer than 250 ms for a burst: these tests are about exactness.
const env = { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.env, REDIS_COMMAND_TIMEOUT_MS: '3000' }

t.test('mode cluster: 300 concurrent consumes at the boundary, exact in Redis and daily_usage', async (t) => {
  const h = await buildTestApp(t, { env })
  const ready = await h.app.inject({ method: 'GET', url: '/ready' })
  t.match(ready.json(), { status: 'ready', mode: 'cluster' })

  const users = Array.from({ length: 12 }, () => h.user())
  // Every user at once, 25 requests each for a limit of 10 deployments: 300 in flight.
  const answers = await Promise.all(users.flatMap((u) => Array.from({ length: 25 }, () =>
    h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: u.headers, payload: { metric: 'deployments' } }))))
  const admitted = answers.filter((a) => a.statusCode === 200).length
  t.equal(admitted, 12 * 10, 'exactly the limit of every user')
  t.equal(answers.filter((a) => a.statusCode === 429).length, 12 * 15, 'the rest denied')

  const masters = await cluster.masters()
  t.equal(masters.length, 3)
  const perMaster = await Promise.all(masters.map(async ({ node }) => {
    const info = execFileSync('redis-cli', ['-p', String(node.port), 'INFO', 'commandstats']).toString()
    return Number(/cmdstat_evalsha:calls=(\d+)/.exec(info)?.[1] ?? 0)
  }))
  t.ok(perMaster.every((n) => n > 0), `every master ran decisions (${perMaster.join(', ')} EVALSHA calls)`)

  await h.app.quota.flusher.flushAll()
  const { rows } = await h.db.pool.query<{ n: number }>(
    'SELECT sum(deployments_created)::int AS n FROM daily_usage WHERE user_id = ANY($1::uuid[])', [users.map((u) => u.id)])
  t.equal(rows[0]?.n, 120, 'daily_usage holds exactly what was admitted')
  for (const u of users.slice(0, 3)) {
    const status = await h.app.inject({ method: 'GET', url: '/api/usage/status', headers: u.headers })
    t.match(status.json(), { metrics: { deployments: { current: 10, remaining: 0 } } })
  }
})

t.test('mode cluster with REDIS_WAIT_REPLICAS=1: every decision reaches a replica before its answer', async (t) => {
  const h = await buildTestApp(t, { env: { ...env, REDIS_WAIT_REPLICAS: '1' } })
  const u = h.user()
  const answers = await Promise.all(Array.from({ length: 60 }, () =>
    h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: u.headers, payload: { metric: 'api_calls', amount: 100 } })))
  t.equal(answers.filter((a) => a.statusCode === 200).length, 50, '5000 / 100')
  t.equal(answers.filter((a) => a.statusCode === 429).length, 10)
  const hold = await h.app.inject({ method: 'POST', url: '/api/usage/reservations', headers: u.headers, payload: { metric: 'compute_hours', amount: 2 } })
  t.equal(hold.statusCode, 201, 'reservations work on a cluster too')
})

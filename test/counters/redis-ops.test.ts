/**
 * Redis operations: scripts survive SCRIPT FLUSH, old day hashes expire on their own, a decision
 * is one Redis command (invariant 6), and midnight UTC starts a fresh allowance (invariant 5).
 * Runs on its own redis-server: SCRIPT FLUSH and CONFIG RESETSTAT are server-wide.
 */
import { Redis } from 'ioredis'
import t from 'tap'
import { DAY_MS, dayStart, utcDay } from '../../src/clock.ts'
import { createTestDatabase } from '../helpers/database.ts'
import type { Teardownable } from '../helpers/database.ts'
import { closeRedis } from '../helpers/redis.ts'
import { startRedisServer } from '../helpers/redis-server.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import type { UsageHarness } from '../helpers/usage.ts'
import { dayRef, hfield, parseCommandStats, todayNoon } from './fixtures.ts'

const server = await startRedisServer(t)
const db = await createTestDatabase(t)
const admin = new Redis(server.url, { maxRetriesPerRequest: 1 })
admin.on('error', () => {})
t.teardown(() => closeRedis(admin))

const harness = (t: Teardownable, now = todayNoon()): Promise<UsageHarness> => createUsageHarness(t, { redisUrl: server.url, db, now, commandTimeoutMs: 5000 })

t.test('decisions keep working after SCRIPT FLUSH', async (t) => {
  const h = await harness(t)
  const user = newUserId()
  t.match(await h.service.consume(user, { api_calls: 1 }), { allowed: true })
  t.equal(await admin.script('FLUSH'), 'OK')
  t.same(await admin.script('EXISTS', '0'.repeat(40)), [0])

  t.match(await h.service.consume(user, { api_calls: 1 }), { allowed: true, metrics: { api_calls: { current: 2 } } }, 'a single call after the flush')
  t.equal(await admin.script('FLUSH'), 'OK')
  const burst = await Promise.all(Array.from({ length: 50 }, () => h.service.consume(user, { api_calls: 1 })))
  t.equal(burst.filter((r) => r.allowed).length, 50, 'a burst of 50 in flight during the reload')
  t.equal((await h.service.status(user)).metrics.api_calls.current, 52, 'each counted exactly once (a NOSCRIPT retry is not a double count)')
  t.equal(await admin.script('FLUSH'), 'OK')
  await h.admin.reset({ userId: user, metric: 'api_calls' })
  t.equal((await h.service.status(user)).metrics.api_calls.current, 0, 'the other scripts reload too')
})

t.test('a shard-day hash expires on its own, 2 days after its day', async (t) => {
  const h = await harness(t)
  const user = newUserId()
  const day = utcDay(h.clock.now())
  const dayKey = dayRef(h.store, user, day)
  await h.service.consume(user, { deployments: 3 })
  // The lifetime is measured on the decision's clock (injectable): 2 days after the day ends.
  const lifetime = (): number => dayStart(h.clock.now()) + 3 * DAY_MS - h.clock.now()
  const first = await admin.pttl(dayKey.hash)
  t.ok(Math.abs(first - lifetime()) < 2000, `TTL = day start + 3 days - now (${first} ms vs ${lifetime()} ms)`)

  h.clock.advance(DAY_MS) // the day has ended
  await h.service.consume(user, { deployments: 1 })
  const pttl = await admin.pttl(dayKey.hash)
  t.ok(pttl > 0 && pttl <= first, `old day hash: PTTL ${pttl} ms (> 0, not extended)`)
  t.equal(await hfield(admin, dayKey, 'd'), 3_000_000, 'still holds its day until then')
  const newKey = dayRef(h.store, user, utcDay(h.clock.now()))
  const second = await admin.pttl(newKey.hash)
  t.ok(Math.abs(second - lifetime()) < 2000, `the new day hash has its own expiry (${second} ms vs ${lifetime()} ms)`)
})

t.test('one decision = one Redis command', async (t) => {
  const h = await harness(t)
  const user = newUserId()
  // Warm: the first call provisions and seeds, and loads the script on this connection (EVAL).
  for (let i = 0; i < 3; i++) await h.service.consume(user, { api_calls: 1 })
  let pgQueries = 0
  const query = h.pool.query.bind(h.pool) as (...args: unknown[]) => unknown
  Object.assign(h.pool, { query: (...args: unknown[]) => ((pgQueries += 1), query(...args)) })
  t.teardown(() => Object.assign(h.pool, { query }))

  // Who sent what: MONITOR tells commands sent by a client from those a script ran ("lua").
  const decisionClient = /addr=(\S+) .*name=quota/.exec(String(await admin.client('LIST')))?.[1]
  t.ok(decisionClient, `the decision connection is ${decisionClient}`)
  const monitor = await admin.monitor()
  t.teardown(() => monitor.disconnect())
  const sent: Record<string, number> = {}
  let sentinel: () => void = () => {}
  const sawSentinel = new Promise<void>((resolve) => (sentinel = resolve))
  monitor.on('monitor', (_time: string, args: string[], source: string) => {
    if (source === decisionClient) sent[String(args[0]).toLowerCase()] = (sent[String(args[0]).toLowerCase()] ?? 0) + 1
    if (args[0]?.toLowerCase() === 'echo' && args[1] === 'end-of-decisions') sentinel()
  })

  await admin.config('RESETSTAT')
  for (let i = 0; i < 1000; i++) {
    const r = await h.service.consume(user, { api_calls: 1 })
    if (!r.allowed) throw new Error(`call ${i} denied`)
  }
  const stats = parseCommandStats(await admin.info('commandstats'))
  await admin.echo('end-of-decisions')
  await sawSentinel

  t.same(sent, { evalsha: 1000 }, 'the decision connection sent 1000 EVALSHA and nothing else')
  t.equal(stats.evalsha, 1000, 'the server counted 1000 EVALSHA')
  for (const cmd of ['keys', 'scan', 'eval', 'hgetall', 'hscan', 'sscan', 'zscan']) t.notOk(stats[cmd], `no ${cmd.toUpperCase()}, not even inside a script`)
  const scripted = Object.entries(stats).filter(([cmd]) => !['evalsha', 'config|resetstat', 'client|list', 'info'].includes(cmd))
  const perDecision = scripted.reduce((sum, [, n]) => sum + n, 0) / 1000
  t.ok(perDecision <= 10, `inside the script: ${perDecision} commands per decision ${JSON.stringify(Object.fromEntries(scripted))}`)
  t.equal(pgQueries, 0, 'no Postgres query on the hot path')
  t.equal((await h.service.status(user)).metrics.api_calls.current, 1003)
})

t.test('midnight UTC: 23:59:59.999 counts for that day, 00:00:00.000 starts a full allowance', async (t) => {
  const today = dayStart(Date.now())
  const h = await harness(t, new Date(today + DAY_MS - 1).toISOString())
  const user = newUserId()
  const day = utcDay(today)
  const results = await Promise.all(Array.from({ length: 15 }, () => h.service.consume(user, { deployments: 1 })))
  t.equal(results.filter((r) => r.allowed).length, 10, '10 admitted at 23:59:59.999')
  t.same([...new Set(results.map((r) => r.day))], [day], 'all counted for that day')
  t.equal(results[0]?.resetsAt, new Date(today + DAY_MS).toISOString(), 'resets at the next midnight')

  h.clock.set(today + DAY_MS)
  const next = utcDay(today + DAY_MS)
  const after = await Promise.all(Array.from({ length: 15 }, () => h.service.consume(user, { deployments: 1 })))
  t.equal(after.filter((r) => r.allowed).length, 10, 'a full allowance of 10 at 00:00:00.000')
  t.same([...new Set(after.map((r) => r.day))], [next])
  t.equal(await hfield(admin, dayRef(h.store, user, day), 'd'), 10_000_000, "yesterday's hash still holds 10")
  t.equal(await hfield(admin, dayRef(h.store, user, next), 'd'), 10_000_000, "today's holds 10")
  const status = await h.service.status(user)
  t.equal(status.date, next)
  t.equal(status.metrics.deployments.current, 10)

  await h.flusher.flushAll()
  const { rows } = await h.pool.query<{ date: string; deployments_created: number }>(
    'SELECT date, deployments_created FROM daily_usage WHERE user_id = $1 ORDER BY date', [user],
  )
  t.same(rows, [{ date: day, deployments_created: 10 }, { date: next, deployments_created: 10 }], 'both days in daily_usage')
})

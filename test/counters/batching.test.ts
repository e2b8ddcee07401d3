/**
 * Micro-batching: the decisions made during one event-loop turn reach Redis as one script call
 * per bucket, and each is still decided on its own, in order, exactly — at a limit boundary, with
 * an idempotency key repeated inside the batch, with a user whose state must first be rebuilt, and
 * with a decision whose deadline has passed beside decisions whose deadline has not.
 * Runs on its own redis-server: CONFIG RESETSTAT is server-wide.
 */
import { Redis } from 'ioredis'
import t from 'tap'
import { utcDay } from '../../src/clock.ts'
import { MAX_ITEMS_PER_CALL as MAX_DECISIONS_PER_CALL } from '../../src/counters/redis/batcher.ts'
import { bucketOf } from '../../src/counters/redis/keys.ts'
import { CounterUnavailableError } from '../../src/counters/store.ts'
import { closeRedis } from '../helpers/redis.ts'
import { startRedisServer } from '../helpers/redis-server.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { parseCommandStats, todayNoon } from './fixtures.ts'

const server = await startRedisServer(t)
const admin = new Redis(server.url, { maxRetriesPerRequest: 1 })
admin.on('error', () => {})
t.teardown(() => closeRedis(admin))
const h = await createUsageHarness(t, { redisUrl: server.url, now: todayNoon(), commandTimeoutMs: 5000 })

t.test('the decisions of one turn cost one script call per bucket (per MAX_DECISIONS_PER_CALL decisions)', async (t) => {
  const users = Array.from({ length: 20 }, () => newUserId())
  for (const u of users) await h.service.consume(u, { api_calls: 1 }) // provisioned, seeded, cached
  const perBucket = new Map<number, number>()
  for (const u of users) perBucket.set(bucketOf(u), (perBucket.get(bucketOf(u)) ?? 0) + 32)
  const expectedCalls = [...perBucket.values()].reduce((sum, n) => sum + Math.ceil(n / MAX_DECISIONS_PER_CALL), 0)

  await admin.config('RESETSTAT')
  const calls = users.flatMap((u) => Array.from({ length: 32 }, () => h.service.consume(u, { api_calls: 1 })))
  const results = await Promise.all(calls)
  const stats = parseCommandStats(await admin.info('commandstats'))

  t.equal(results.filter((r) => r.allowed).length, 640, 'all 640 admitted')
  t.equal(stats.evalsha, expectedCalls, `${stats.evalsha} EVALSHA for 640 decisions in ${perBucket.size} buckets`)
  for (const u of users) {
    const status = await h.service.status(u)
    if (status.metrics.api_calls.current !== 33) t.fail(`user ${u}: ${status.metrics.api_calls.current}, expected 33`)
  }
  const firstUser = results.slice(0, 32).map((r) => r.metrics.api_calls?.current ?? 0).sort((a, b) => a - b)
  t.same(firstUser, Array.from({ length: 32 }, (_, i) => i + 2), 'one user\'s 32 answers are 2..33: decided one after the other')
})

t.test('a burst for one bucket is cut into calls of bounded length, still exact', async (t) => {
  const user = newUserId()
  await h.service.consume(user, { api_calls: 1 })
  const burst = 2 * MAX_DECISIONS_PER_CALL + 50
  await admin.config('RESETSTAT')
  const results = await Promise.all(Array.from({ length: burst }, () => h.service.consume(user, { api_calls: 1 })))
  const stats = parseCommandStats(await admin.info('commandstats'))
  const calls = Math.ceil(burst / MAX_DECISIONS_PER_CALL)
  t.equal(stats.evalsha, calls, `${burst} decisions of one user: ${calls} script calls`)
  t.same(results.map((r) => r.metrics.api_calls?.current).sort((a, b) => (a ?? 0) - (b ?? 0)),
    Array.from({ length: burst }, (_, i) => i + 2), 'each answer one step after another, none lost or doubled')
})

t.test('one batch: a limit boundary, a repeated idempotency key, a user to rebuild', async (t) => {
  const atLimit = newUserId() // free: 10 deployments a day
  const retried = newUserId()
  const fresh = newUserId()
  await h.service.consume(atLimit, { deployments: 7 })
  await h.service.consume(retried, { api_calls: 1 })
  // `fresh` has never been seen: its first decision finds no state and is rebuilt from Postgres.
  const [boundary, idempotent, first] = await Promise.all([
    Promise.all(Array.from({ length: 50 }, () => h.service.consume(atLimit, { deployments: 1 }))),
    Promise.all(Array.from({ length: 5 }, () => h.service.consume(retried, { api_calls: 3 }, { idempotencyKey: 'job-1' }))),
    Promise.all(Array.from({ length: 5 }, () => h.service.consume(fresh, { compute_hours: 0.25 }))),
  ])
  t.equal(boundary.filter((r) => r.allowed).length, 3, 'exactly 3 of 50 fit under the limit')
  t.equal((await h.service.status(atLimit)).metrics.deployments.current, 10)
  t.equal(idempotent.filter((r) => !r.replayed).length, 1, 'the key counted once')
  t.ok(idempotent.every((r) => r.allowed && r.metrics.api_calls?.current === 4), 'and every repeat answers as the first call')
  t.equal((await h.service.status(retried)).metrics.api_calls.current, 4)
  t.ok(first.every((r) => r.allowed), 'the rebuilt user is decided too')
  t.equal((await h.service.status(fresh)).metrics.compute_hours.current, 1.25)
})

t.test('a decision past its deadline fails alone; its batch neighbours are decided', async (t) => {
  const late = newUserId()
  const onTime = newUserId()
  await h.service.consume(late, { api_calls: 1 })
  await h.service.consume(onTime, { api_calls: 1 })
  const day = utcDay(h.clock.now())
  const item = [{ metric: 'api_calls' as const, amount: 1_000_000, limit: null }]
  const [lateResult, onTimeResult] = await Promise.allSettled([
    h.store.decide({ mode: 'increment', userId: late, day, now: h.clock.now(), metrics: item }, { deadline: () => 1 }),
    h.store.decide({ mode: 'increment', userId: onTime, day, now: h.clock.now(), metrics: item }, { deadline: () => Date.now() + 60_000 }),
  ])
  t.equal(lateResult?.status, 'rejected')
  t.ok(lateResult?.status === 'rejected' && lateResult.reason instanceof CounterUnavailableError, 'the late one: CounterUnavailableError')
  t.match(onTimeResult, { status: 'fulfilled', value: { outcome: 'allowed', current: [2_000_000] } })
  t.equal((await h.service.status(late)).metrics.api_calls.current, 1, 'the late one changed nothing')
})

t.test('arguments a script would choke on fail before anything is sent', async (t) => {
  const user = newUserId()
  const neighbour = newUserId()
  await h.service.consume(user, { api_calls: 1 })
  await h.service.consume(neighbour, { api_calls: 1 })
  const day = utcDay(h.clock.now())
  const item = { metric: 'api_calls' as const, amount: 1_000_000, limit: null }
  const [bogusDay, fractional, fine] = await Promise.allSettled([
    h.service.refund(user, { api_calls: 1 }, 'bogus'),
    h.store.decide({ mode: 'increment', userId: user, day, now: h.clock.now(), metrics: [{ ...item, amount: 0.5 }] }),
    h.store.decide({ mode: 'increment', userId: neighbour, day, now: h.clock.now(), metrics: [item] }),
  ])
  t.match(bogusDay, { status: 'rejected', reason: { message: /day must be YYYY-MM-DD/ } })
  t.match(fractional, { status: 'rejected', reason: { message: /whole number of micro-units/ } })
  t.match(fine, { status: 'fulfilled', value: { outcome: 'allowed', current: [2_000_000] } }, 'the valid neighbour is decided')
  t.equal((await h.service.status(user)).metrics.api_calls.current, 1, 'nothing of the invalid ones was applied')
  t.notOk(await admin.exists(h.store.keys.userDay(user, 'bogus')), 'no day hash for a day that is not one')
})

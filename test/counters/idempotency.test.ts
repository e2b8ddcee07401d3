/**
 * Invariant 3 for client retries: an idempotency key counts once, replays the first answer (a
 * denial stays a denial), refuses reuse with other parameters, is scoped to the user and lives
 * 24 h. Bad keys are refused before anything is counted.
 */
import t from 'tap'
import { InvalidAmountError } from '../../src/metrics.ts'
import { IdempotencyConflictError } from '../../src/usage/service.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { keysWithPrefix, pollUntil, todayNoon } from './fixtures.ts'

const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })

t.test('the same key sent 50 times at once counts once; every call gets the same answer', async (t) => {
  const user = newUserId()
  await h.service.status(user)
  const results = await Promise.all(
    Array.from({ length: 50 }, () => h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'deploy-42' })),
  )
  t.equal(results.filter((r) => !r.replayed).length, 1, 'exactly one call was executed')
  t.equal(results.filter((r) => r.replayed).length, 49, 'the 49 others were replayed')
  const answers = new Set(results.map((r) => JSON.stringify({ ...r, replayed: undefined })))
  t.equal(answers.size, 1, 'every call got the same answer')
  t.match(results[0], { allowed: true, tier: 'free', metrics: { deployments: { current: 1, limit: 10, remaining: 9 } } })
  t.equal((await h.service.status(user)).metrics.deployments.current, 1, 'counted once')

  const later = await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'deploy-42' })
  t.match(later, { allowed: true, replayed: true, metrics: { deployments: { current: 1 } } }, 'a later retry replays the first answer')
  const other = await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'deploy-43' })
  t.match(other, { allowed: true, replayed: false, metrics: { deployments: { current: 2 } } }, 'another key counts')
})

t.test('an idempotent increment counts once too', async (t) => {
  const user = newUserId()
  for (let i = 0; i < 5; i++) await h.service.incrementUsage(user, 'compute_hours', 0.25, { idempotencyKey: 'job-7' })
  t.equal((await h.service.status(user)).metrics.compute_hours.current, 0.25)
})

t.test('a denial stays a denial on repeat, even after the limit was raised', async (t) => {
  const user = newUserId()
  for (let i = 0; i < 10; i++) await h.service.consume(user, { deployments: 1 })
  const denied = await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'retry-me' })
  t.match(denied, { allowed: false, replayed: false, deniedMetric: 'deployments', tier: 'free' })

  // Raise this user's limit (free 10 -> pro 50) and wait until the service sees it.
  await h.db.pool.query(`UPDATE users SET tier = 'pro' WHERE id = $1`, [user])
  await pollUntil(async () => (await h.service.checkLimit(user, 'deployments', 1)).allowed, 2000, 'the tier change')

  const repeat = await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'retry-me' })
  t.match(repeat, { allowed: false, replayed: true, deniedMetric: 'deployments', reason: 'Daily deployments limit exceeded' })
  t.equal(repeat.tier, 'free', 'the first answer, tier included, is replayed')
  t.match(repeat.metrics.deployments, { current: 10, limit: 10, remaining: 0 })
  const status = await h.service.status(user)
  t.equal(status.metrics.deployments.current, 10, 'the repeat counted nothing')
  t.equal(status.tier, 'pro')
  t.match(await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'fresh-key' }), { allowed: true, replayed: false },
    'a new key gets the raised limit')
})

t.test('a key reused with different parameters is refused', async (t) => {
  const user = newUserId()
  await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'k1' })
  await t.rejects(h.service.consume(user, { deployments: 2 }, { idempotencyKey: 'k1' }), IdempotencyConflictError, 'other amount')
  await t.rejects(h.service.consume(user, { api_calls: 1 }, { idempotencyKey: 'k1' }), IdempotencyConflictError, 'other metric')
  await t.rejects(h.service.consume(user, { deployments: 1, api_calls: 1 }, { idempotencyKey: 'k1' }), IdempotencyConflictError, 'more metrics')
  await t.rejects(h.service.incrementUsage(user, 'deployments', 1, { idempotencyKey: 'k1' }), IdempotencyConflictError, 'increment instead of consume')
  const status = await h.service.status(user)
  t.equal(status.metrics.deployments.current, 1, 'nothing counted by the conflicting calls')
  t.equal(status.metrics.api_calls.current, 0)
  t.match(await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'k1' }), { allowed: true, replayed: true },
    'the original parameters still replay')
})

t.test('keys are per user', async (t) => {
  const [a, b] = [newUserId(), newUserId()]
  const ra = await h.service.consume(a, { deployments: 1 }, { idempotencyKey: 'shared-key' })
  const rb = await h.service.consume(b, { deployments: 1 }, { idempotencyKey: 'shared-key' })
  t.match(ra, { allowed: true, replayed: false })
  t.match(rb, { allowed: true, replayed: false }, "another user's key does not replay")
  t.equal((await h.service.status(a)).metrics.deployments.current, 1)
  t.equal((await h.service.status(b)).metrics.deployments.current, 1)
  // Even a reuse with other parameters is no conflict across users.
  t.match(await h.service.consume(b, { api_calls: 3 }, { idempotencyKey: 'other' }), { allowed: true })
  t.match(await h.service.consume(a, { api_calls: 5 }, { idempotencyKey: 'other' }), { allowed: true, replayed: false })
})

t.test('a key is kept for 24 hours', async (t) => {
  const user = newUserId()
  await h.service.consume(user, { deployments: 1 }, { idempotencyKey: 'ttl-key' })
  const pttl = await h.redis.pttl(h.store.keys.idempotency(user, 'ttl-key'))
  t.ok(pttl > 86_400_000 - 60_000 && pttl <= 86_400_000, `PTTL ${pttl} ms is ~24 h`)
  // A call without a key stores nothing.
  await h.service.consume(user, { deployments: 1 })
  const idemKeys = (await keysWithPrefix(h.redis, h.prefix)).filter((k) => k.includes(`:i:${user}:`))
  t.same(idemKeys, [h.store.keys.idempotency(user, 'ttl-key')])
})

t.test('invalid keys are refused before anything is counted', async (t) => {
  const user = newUserId()
  const invalid: [string, string][] = [
    ['empty', ''],
    ['129 characters', 'k'.repeat(129)],
    ['non-ASCII', 'clé-1'],
    ['emoji', 'deploy-🚀'],
    ['newline', 'a\nb'],
    ['tab', 'a\tb'],
    ['NUL', 'a\u0000b'],
    ['DEL', 'a\u007fb'],
  ]
  for (const [what, key] of invalid) {
    await t.rejects(h.service.consume(user, { deployments: 1 }, { idempotencyKey: key }), InvalidAmountError, `consume: ${what}`)
    await t.rejects(h.service.incrementUsage(user, 'api_calls', 1, { idempotencyKey: key }), InvalidAmountError, `increment: ${what}`)
  }
  await t.rejects(h.service.consume(user, { deployments: 1 }, { idempotencyKey: 42 as unknown as string }), InvalidAmountError, 'not a string')
  const keys = (await keysWithPrefix(h.redis, h.prefix)).filter((k) => k.includes(user))
  t.same(keys, [], 'no Redis key of this user exists')

  // The edges of the valid range work.
  const longest = `${'k'.repeat(127)}~`
  t.match(await h.service.consume(user, { deployments: 1 }, { idempotencyKey: longest }), { allowed: true, replayed: false }, '128 characters')
  t.match(await h.service.consume(user, { deployments: 1 }, { idempotencyKey: ' ' }), { allowed: true, replayed: false }, 'a single space')
  t.match(await h.service.consume(user, { deployments: 1 }, { idempotencyKey: '{a},b:c' }), { allowed: true, replayed: false }, 'braces, commas, colons')
  t.match(await h.service.consume(user, { deployments: 1 }, { idempotencyKey: '{a},b:c' }), { allowed: true, replayed: true })
  t.equal((await h.service.status(user)).metrics.deployments.current, 3)
})

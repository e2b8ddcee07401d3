/**
 * Issue 11, finding 8: token claims are checked as RFC 8725 advises. JWT_ISSUER / JWT_AUDIENCE
 * are verified when set (and the claim is then required); a token lives at most
 * JWT_MAX_LIFETIME_S; exp, nbf and an iat in the future get JWT_CLOCK_SKEW_S of allowance and no
 * more; the nil UUID is not a user id.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { checkTokenTimes } from '../../src/http/auth.ts'
import { HttpError } from '../../src/http/errors.ts'
import { buildTestApp } from '../helpers/app.ts'
import type { TestApp } from '../helpers/app.ts'
import { signToken } from '../helpers/tokens.ts'
import type { SignTokenOptions } from '../helpers/tokens.ts'
import { envelope } from './envelope.ts'

function routes(app: FastifyInstance): void {
  app.get('/test/me', { preHandler: app.requireUser }, async (request) => request.user)
}

const now = (): number => Math.floor(Date.now() / 1000)

async function call(h: TestApp, options: Partial<SignTokenOptions>) {
  const token = signToken({ sub: randomUUID(), secret: h.secret, ...options })
  const res = await h.app.inject({ url: '/test/me', headers: { authorization: `Bearer ${token}` } })
  return { status: res.statusCode, message: res.statusCode === 200 ? '' : envelope(res.body).message, res }
}

const strict = await buildTestApp(t, {
  routes,
  env: { JWT_ISSUER: 'https://issuer.example', JWT_AUDIENCE: 'quota-api, quota-admin', JWT_MAX_LIFETIME_S: '3600', JWT_CLOCK_SKEW_S: '30' },
})
const good = { iss: 'https://issuer.example', aud: 'quota-api' }

t.test('jwt iss/aud: verified when JWT_ISSUER and JWT_AUDIENCE are set', async (t) => {
  t.equal((await call(strict, good)).status, 200, 'matching iss and aud')
  t.equal((await call(strict, { ...good, aud: 'quota-admin' })).status, 200, 'the second audience')
  t.equal((await call(strict, { ...good, aud: ['other', 'quota-api'] })).status, 200, 'an aud list naming one of them')

  const cases: Array<[string, Partial<SignTokenOptions>, RegExp]> = [
    ['no iss', { aud: 'quota-api' }, /^Token has no iss claim; the iss claim is required$/],
    ['another iss', { ...good, iss: 'https://evil.example' }, /^Token iss claim is not this service's issuer$/],
    ['iss differing in case', { ...good, iss: 'https://ISSUER.example' }, /^Token iss claim is not this service's issuer$/],
    ['no aud', { iss: good.iss }, /^Token has no aud claim; the aud claim is required$/],
    ['another aud', { ...good, aud: 'billing' }, /^Token aud claim does not name this service's audience$/],
    ['an aud list without ours', { ...good, aud: ['billing', 'search'] }, /^Token aud claim does not name this service's audience$/],
    ['iss of the wrong type', { ...good, claims: { iss: 42 } }, /^Token rejected: The iss claim must be a string/],
  ]
  for (const [name, options, message] of cases) {
    const res = await call(strict, options)
    t.equal(res.status, 401, name)
    t.match(res.message, message, name)
    t.equal(res.res.headers['www-authenticate'], 'Bearer')
  }
})

t.test('jwt iss/aud: not checked when unset', async (t) => {
  const open = await buildTestApp(t, { routes, db: strict.db })
  t.equal((await call(open, {})).status, 200, 'none')
  t.equal((await call(open, { iss: 'anyone', aud: 'anything' })).status, 200, 'any')
})

t.test('jwt lifetime: exp - iat, or exp - now without iat, at most JWT_MAX_LIFETIME_S', async (t) => {
  t.equal((await call(strict, { ...good, expiresIn: 3600 })).status, 200, 'exactly the maximum')
  const long = await call(strict, { ...good, expiresIn: 3601 })
  t.equal(long.status, 401, 'one second more')
  t.equal(long.message, 'Token lifetime (exp - iat) of 3601 s exceeds the maximum of 3600 s')
  const year9999 = await call(strict, { ...good, claims: { exp: 253402300799 } })
  t.equal(year9999.status, 401, 'exp in the year 9999')
  t.match(year9999.message, /^Token lifetime \(exp - iat\) of \d+ s exceeds the maximum of 3600 s$/)
  t.equal((await call(strict, { ...good, iat: now() - 3000, expiresIn: 3600 })).status, 200, 'an older token within its lifetime')

  t.equal((await call(strict, { ...good, iat: null, expiresIn: 3000 })).status, 200, 'no iat, exp within the maximum from now')
  const noIat = await call(strict, { ...good, iat: null, expiresIn: 7200 })
  t.equal(noIat.status, 401, 'no iat, exp beyond the maximum from now')
  t.match(noIat.message, /^Token without iat expires in \d+ s, more than the maximum lifetime of 3600 s$/)
})

t.test('jwt lifetime: the default maximum is 30 days', async (t) => {
  const open = await buildTestApp(t, { routes, db: strict.db })
  t.equal(open.config.jwt.maxLifetimeS, 2_592_000)
  t.equal((await call(open, { expiresIn: '30d' })).status, 200)
  t.equal((await call(open, { expiresIn: '31d' })).status, 401)
  t.equal((await call(open, { claims: { exp: 253402300799 } })).status, 401, 'exp in the year 9999')
})

t.test('jwt clock skew: iat in the future, exp and nbf get JWT_CLOCK_SKEW_S and no more', async (t) => {
  t.equal((await call(strict, { ...good, iat: now() + 20, expiresIn: 600 })).status, 200, 'iat 20 s ahead')
  const future = await call(strict, { ...good, iat: now() + 120, expiresIn: 600 })
  t.equal(future.status, 401, 'iat 2 min ahead')
  t.match(future.message, /^Token iat claim is in the future \(.+\); tokens issued more than 30 s ahead of this server's clock are refused$/)

  t.equal((await call(strict, { ...good, iat: now() - 600, expiresIn: 590 })).status, 200, 'expired 10 s ago: within the skew')
  const expired = await call(strict, { ...good, iat: now() - 600, expiresIn: 500 })
  t.equal(expired.status, 401, 'expired 100 s ago')
  t.match(expired.message, /^Token has expired at /)

  t.equal((await call(strict, { ...good, claims: { nbf: now() + 20 } })).status, 200, 'nbf 20 s ahead')
  const inactive = await call(strict, { ...good, claims: { nbf: now() + 120 } })
  t.equal(inactive.status, 401, 'nbf 2 min ahead')
  t.match(inactive.message, /^Token will be active at /)

  const badIat = await call(strict, { ...good, claims: { iat: 'yesterday' } })
  t.equal(badIat.status, 401)
  t.equal(badIat.message, 'Token iat claim must be a number of seconds since 1970-01-01T00:00:00Z')
})

t.test('jwt sub: the nil UUID is not a user id', async (t) => {
  const res = await call(strict, { ...good, sub: '00000000-0000-0000-0000-000000000000' })
  t.equal(res.status, 401)
  t.equal(res.message, 'Token sub claim must not be the nil UUID')
  const { rows } = await strict.db.pool.query("SELECT 1 FROM users WHERE id = '00000000-0000-0000-0000-000000000000'")
  t.equal(rows.length, 0, 'and it is not provisioned')
})

t.test('jwt claims: a cached token is still checked against the clock', async (t) => {
  // fast-jwt caches verified tokens; the lifetime and iat rules run on every request.
  const rules = { maxLifetimeS: 3600, clockSkewS: 30 }
  const base = 1_800_000_000
  t.doesNotThrow(() => checkTokenTimes({ iat: base + 30, exp: base + 600 }, rules, base))
  t.throws(() => checkTokenTimes({ iat: base + 31, exp: base + 600 }, rules, base), HttpError)
  t.doesNotThrow(() => checkTokenTimes({ exp: base + 3630 }, rules, base))
  t.throws(() => checkTokenTimes({ exp: base + 3631 }, rules, base), HttpError)
})

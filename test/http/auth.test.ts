/**
 * DESIGN.md 1.4: bearer JWTs, 401 for every bad token (with a precise message and
 * WWW-Authenticate), 403 for non-admins on admin routes, users provisioned exactly once.
 */
import { createSign, generateKeyPairSync, randomUUID } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { ensureUser } from '../../src/db/users.ts'
import { signToken, unsignedToken } from '../helpers/tokens.ts'
import { buildTestApp } from '../helpers/app.ts'
import { envelope } from './envelope.ts'

function testRoutes(app: FastifyInstance): void {
  app.get('/test/me', { preHandler: app.requireUser }, async (request) => request.user)
  app.get('/test/admin', { preHandler: app.requireAdmin }, async (request) => ({ admin: request.user.id }))
}

const { app, secret, db } = await buildTestApp(t, { routes: testRoutes })
const pool = db.pool

async function me(authorization?: string) {
  return app.inject({ method: 'GET', url: '/test/me', headers: authorization === undefined ? {} : { authorization } })
}

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
const now = (): number => Math.floor(Date.now() / 1000)

t.test('every bad credential is a 401 with the envelope, a precise message and WWW-Authenticate', async (t) => {
  const sub = randomUUID()
  const cases: Array<[string, string | undefined, RegExp]> = [
    ['no header', undefined, /missing authorization header/i],
    ['not a Bearer scheme', 'Basic dXNlcjpwYXNz', /bearer scheme.*"Basic"/i],
    ['Bearer alone', 'Bearer', /no token after "Bearer"/i],
    ['Bearer and spaces', 'Bearer    ', /no token after "Bearer"/i],
    ['two tokens', 'Bearer a.b.c d.e.f', /malformed authorization header/i],
    ['garbage token', 'Bearer not-a-jwt', /malformed token: expected three base64url segments/i],
    ['garbage segments', 'Bearer aaaa.bbbb.cccc', /malformed token/i],
    ['alg none', `Bearer ${unsignedToken({ sub })}`, /unsigned/i],
    ['alg none with a signature', `Bearer ${b64({ alg: 'none' })}.${b64({ sub, exp: now() + 60 })}.c2ln`, /algorithm "none" is not accepted/i],
    ['wrong secret', `Bearer ${signToken({ sub, secret: 'x'.repeat(32) })}`, /signature is invalid/i],
    ['expired', `Bearer ${signToken({ sub, secret, expiresIn: -60 })}`, /^Token has expired at \d{4}-/],
    ['no exp', `Bearer ${signToken({ sub, secret, claims: { exp: undefined } })}`, /no exp claim; the exp claim is required/i],
    ['exp not a number', `Bearer ${signToken({ sub, secret, claims: { exp: 'tomorrow' } })}`, /exp claim must be a number/i],
    ['sub not a UUID', `Bearer ${signToken({ sub: 'alice', secret })}`, /sub claim must be a UUID/i],
    ['no sub', `Bearer ${signToken({ sub, secret, claims: { sub: undefined } })}`, /sub claim must be a UUID/i],
    ['sub a number', `Bearer ${signToken({ sub, secret, claims: { sub: 42 } })}`, /sub claim must be a UUID/i],
  ]
  for (const [name, header, message] of cases) {
    const res = await me(header)
    t.equal(res.statusCode, 401, `${name}: 401`)
    t.equal(res.headers['www-authenticate'], 'Bearer', `${name}: WWW-Authenticate`)
    const detail = envelope(res.body)
    t.equal(detail.error, 'Unauthorized', `${name}: title`)
    t.match(detail.message, message, `${name}: message "${detail.message}"`)
  }
  const { rows } = await pool.query('SELECT 1 FROM users WHERE id = $1', [sub])
  t.equal(rows.length, 0, 'no refused token provisions a user')
})

t.test('a valid token passes and the user is provisioned with DEFAULT_TIER', async (t) => {
  const sub = randomUUID()
  const res = await me(`Bearer ${signToken({ sub, secret, username: 'ada' })}`)
  t.equal(res.statusCode, 200)
  t.same(res.json(), { id: sub, username: 'ada', admin: false })
  const { rows } = await pool.query('SELECT id::text, username, tier FROM users WHERE id = $1', [sub])
  t.same(rows, [{ id: sub, username: 'ada', tier: 'free' }])
})

t.test('admin routes: 403 for a user, 200 for role "admin" and for roles ["admin"]', async (t) => {
  const sub = randomUUID()
  const user = await app.inject({ url: '/test/admin', headers: { authorization: `Bearer ${signToken({ sub, secret, role: 'user' })}` } })
  t.equal(user.statusCode, 403)
  t.same(envelope(user.body), { error: 'Forbidden', message: 'This route requires an admin token' })
  const anon = await app.inject({ url: '/test/admin' })
  t.equal(anon.statusCode, 401, 'no token on an admin route is 401, not 403')
  for (const claims of [{ role: 'admin' }, { roles: ['reader', 'admin'] }]) {
    const res = await app.inject({ url: '/test/admin', headers: { authorization: `Bearer ${signToken({ sub, secret, ...claims })}` } })
    t.equal(res.statusCode, 200, JSON.stringify(claims))
    t.same(res.json(), { admin: sub })
  }
  const notAdmin = await app.inject({ url: '/test/admin', headers: { authorization: `Bearer ${signToken({ sub, secret, claims: { roles: 'admin' } })}` } })
  t.equal(notAdmin.statusCode, 403, 'roles must be an array')
})

t.test('20 concurrent first requests create the users row exactly once', async (t) => {
  const sub = randomUUID()
  const token = signToken({ sub, secret, username: `racer-${sub.slice(0, 8)}` })
  const results = await Promise.all(Array.from({ length: 20 }, () => me(`Bearer ${token}`)))
  t.same(results.map((r) => r.statusCode), Array(20).fill(200))
  const { rows } = await pool.query('SELECT username FROM users WHERE id = $1', [sub])
  t.same(rows, [{ username: `racer-${sub.slice(0, 8)}` }])
})

t.test('ensureUser is race-free across processes (no in-process dedupe)', async (t) => {
  const sub = randomUUID()
  const rows = await Promise.all(Array.from({ length: 20 }, (_, i) =>
    ensureUser(pool, { id: sub, username: i % 2 ? 'twin-a' : 'twin-b', defaultTier: 'free' })))
  t.equal(new Set(rows.map((r) => r.username)).size, 1, 'every caller sees the same row')
  const count = await pool.query('SELECT count(*)::int AS n FROM users WHERE id = $1', [sub])
  t.equal(count.rows[0].n, 1)
  // Two different ids claiming one free username at once: one gets it, the other its id.
  const [a, b] = [randomUUID(), randomUUID()]
  const pair = await Promise.all([a, b].map((id) => ensureUser(pool, { id, username: 'contested', defaultTier: 'free' })))
  t.same(pair.map((r) => r.username).sort(), ['contested', pair.find((r) => r.username !== 'contested')!.id].sort())
})

t.test('a taken username falls back to the id; an existing row is never changed', async (t) => {
  const [first, second] = [randomUUID(), randomUUID()]
  t.equal((await me(`Bearer ${signToken({ sub: first, secret, username: 'grace' })}`)).json().username, 'grace')
  const res = await me(`Bearer ${signToken({ sub: second, secret, username: 'grace' })}`)
  t.same(res.json(), { id: second, username: second, admin: false })
  const again = await ensureUser(pool, { id: first, username: 'renamed', defaultTier: 'pro' })
  t.same(again, { id: first, username: 'grace', tier: 'free' }, 'neither username nor tier changes')
  const squatter = await ensureUser(pool, { id: randomUUID(), username: randomUUID(), defaultTier: 'free' })
  t.equal(squatter.username, squatter.id, "a UUID-shaped username other than one's own id is not taken")
  const noClaim = randomUUID()
  t.equal((await me(`Bearer ${signToken({ sub: noClaim, secret })}`)).json().username, noClaim, 'no claim: the id')
})

t.test('a mixed-case sub is the same user as its lower case', async (t) => {
  const sub = randomUUID()
  const upper = await me(`Bearer ${signToken({ sub: sub.toUpperCase(), secret, username: 'mixed' })}`)
  t.equal(upper.statusCode, 200)
  t.equal(upper.json().id, sub)
  const lower = await me(`Bearer ${signToken({ sub, secret })}`)
  t.same(lower.json(), { id: sub, username: 'mixed', admin: false })
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM users WHERE lower(id::text) = $1', [sub])
  t.equal(rows[0].n, 1)
})

function signAsymmetric(alg: 'RS256' | 'ES256', privateKey: KeyObject, payload: object): string {
  const input = `${b64({ alg, typ: 'JWT' })}.${b64(payload)}`
  const signer = createSign('SHA256').update(input)
  const signature = alg === 'ES256'
    ? signer.sign({ key: privateKey, dsaEncoding: 'ieee-p1363' })
    : signer.sign(privateKey)
  return `${input}.${signature.toString('base64url')}`
}

t.test('RS256 and ES256 tokens verify with JWT_PUBLIC_KEY; HS256 signed with the public key does not', async (t) => {
  for (const [alg, type] of [['RS256', 'rsa'], ['ES256', 'ec']] as const) {
    const keys = type === 'rsa'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const pem = keys.publicKey.export({ type: 'spki', format: 'pem' }).toString()
    const { app: rsApp } = await buildTestApp(t, { env: { JWT_PUBLIC_KEY: pem, JWT_SECRET: '' }, routes: testRoutes })
    const sub = randomUUID()
    const good = signAsymmetric(alg, keys.privateKey, { sub, exp: now() + 60, roles: ['admin'] })
    const ok = await rsApp.inject({ url: '/test/admin', headers: { authorization: `Bearer ${good}` } })
    t.equal(ok.statusCode, 200, `${alg} accepted`)
    // Algorithm confusion: the public key (which is public) used as an HMAC secret.
    const forged = signToken({ sub, secret: pem, role: 'admin' })
    const res = await rsApp.inject({ url: '/test/admin', headers: { authorization: `Bearer ${forged}` } })
    t.equal(res.statusCode, 401, `${alg}: HS256 refused`)
    t.match(envelope(res.body).message, /algorithm "HS256" is not accepted/)
    const expired = signAsymmetric(alg, keys.privateKey, { sub, exp: now() - 60 })
    t.equal((await rsApp.inject({ url: '/test/me', headers: { authorization: `Bearer ${expired}` } })).statusCode, 401)
  }
})

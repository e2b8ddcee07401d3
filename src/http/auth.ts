/**
 * Authentication: `Authorization: Bearer <JWT>`, HS256 with JWT_SECRET (or the dev
 * secret) or RS256/ES256 with JWT_PUBLIC_KEY (verify-only). The accepted algorithms are fixed by
 * the key, so `alg: none` and HS/RS confusion are refused; `exp` is required.
 *
 * The claims are checked as RFC 8725 advises: `iss` must equal JWT_ISSUER and `aud` must contain
 * one of JWT_AUDIENCE when those are set (the claim is then required); a token may live at most
 * JWT_MAX_LIFETIME_S (`exp - iat`, or `exp - now` without `iat`); `exp`, `nbf` and an `iat` in
 * the future get JWT_CLOCK_SKEW_S of allowance; `sub` is a UUID other than the nil UUID.
 *
 * `app.authenticate` verifies, validates the claims, provisions the user on first sight and sets
 * `request.user`. Provisioned ids live in a bounded LRU, so a known user costs no Postgres round
 * trip; concurrent first requests of one user share one provisioning query.
 *
 * Token expiry is checked against the wall clock, not the injectable app clock: tokens are minted
 * by real issuers on real time, while the app clock only moves usage days in tests.
 */
import { createPublicKey } from 'node:crypto'
import fastifyJwt from '@fastify/jwt'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Algorithm, TokenValidationErrorCode } from 'fast-jwt'
import { LRUCache } from 'lru-cache'
import type { Config } from '../config.ts'
import { isUuid } from '../ids.ts'
import { HttpError } from './errors.ts'

/** Who is calling. `admin` comes from the token; the tier is never taken from the token. */
export interface AuthUser {
  /** The `sub` claim, a UUID in lower case. */
  id: string
  /** The username stored in `users` (the claim only counts on first sight). */
  username: string
  admin: boolean
}

/** Claims as they arrive: nothing is trusted until validated. */
export interface TokenClaims {
  sub?: unknown
  exp?: unknown
  iat?: unknown
  role?: unknown
  roles?: unknown
  username?: unknown
  [claim: string]: unknown
}

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: TokenClaims
    user: AuthUser
  }
}

export type AuthHook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>

declare module 'fastify' {
  interface FastifyInstance {
    /** preHandler: verifies the token and sets `request.user`; 401 otherwise. */
    authenticate: AuthHook
    /** preHandler for user routes (same as `authenticate`). */
    requireUser: AuthHook
    /** preHandler for admin routes: 401 without a valid token, 403 for a non-admin. */
    requireAdmin: AuthHook
  }
}

export interface AuthPluginOptions {
  config: Config
  /** The user of a token's `sub`, created on first sight (the limits cache does it, in one place). */
  provisionUser: (id: string, username: string | undefined) => Promise<{ username: string }>
  /** Provisioned users remembered per process. @default 100000 */
  userCacheSize?: number
  /**
   * How long a provisioned user is remembered. Bounded so a row deleted by an operator is
   * re-created within this time. @default 900000 (15 min)
   */
  userCacheTtlMs?: number
}

// Usernames outside this shape are ignored (the id is used), not refused: the token is still valid.
const USERNAME = /^[^\p{Cc}]{1,128}$/u

/** RFC 9562 5.9: "all bits zero", a placeholder, never a user. */
const NIL_UUID = '00000000-0000-0000-0000-000000000000'

function unauthorized(message: string): HttpError {
  return new HttpError(401, 'Unauthorized', message, {}, { 'WWW-Authenticate': 'Bearer' })
}

/** The algorithms a public key can verify; anything else in a token's header is refused. */
export function algorithmsFor(config: Config): Algorithm[] {
  if (!config.jwt.publicKey) return ['HS256']
  const key = createPublicKey(config.jwt.publicKey)
  if (key.asymmetricKeyType === 'rsa') return ['RS256', 'RS384', 'RS512']
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve
    if (curve === 'prime256v1') return ['ES256']
    if (curve === 'secp384r1') return ['ES384']
    if (curve === 'secp521r1') return ['ES512']
  }
  throw new Error(`JWT_PUBLIC_KEY: unsupported key (${key.asymmetricKeyType ?? 'unknown'}); use an RSA or EC P-256 public key`)
}

const TOKEN_MESSAGES: Partial<Record<TokenValidationErrorCode, string>> = {
  FAST_JWT_MISSING_SIGNATURE: 'Unsigned tokens (alg "none") are not accepted',
  FAST_JWT_INVALID_SIGNATURE: 'Token signature is invalid',
  FAST_JWT_INVALID_TYPE: 'Malformed token',
}

/** A precise 401 for a fast-jwt TokenError; other errors are not ours to explain. */
function tokenError(err: unknown, algorithms: readonly string[], header: () => { alg?: unknown } | undefined): HttpError | undefined {
  const code = (err as { code?: string } | null)?.code as TokenValidationErrorCode | undefined
  const detail = (err as Error).message
  if (!code?.startsWith('FAST_JWT_')) return undefined
  if (TOKEN_MESSAGES[code]) return unauthorized(TOKEN_MESSAGES[code])
  switch (code) {
    case 'FAST_JWT_MALFORMED':
    case 'FAST_JWT_INVALID_PAYLOAD':
      return unauthorized(code === 'FAST_JWT_MALFORMED' && /is malformed/.test(detail)
        ? 'Malformed token: expected three base64url segments (header.payload.signature)'
        : `Malformed token: ${detail.replace(/^The /, 'the ')}`)
    case 'FAST_JWT_INVALID_ALGORITHM': {
      const alg = header()?.alg
      return unauthorized(`Token algorithm ${JSON.stringify(alg)} is not accepted; expected ${algorithms.join(' or ')}`)
    }
    case 'FAST_JWT_MISSING_REQUIRED_CLAIM': {
      const claim = /The (\w+) claim/.exec(detail)?.[1] ?? 'a required'
      return unauthorized(`Token has no ${claim} claim; the ${claim} claim is required`)
    }
    case 'FAST_JWT_EXPIRED':
    case 'FAST_JWT_INACTIVE':
      // "The token has expired at 2026-01-01T00:00:00.000Z." -> "Token has expired at ..."
      return unauthorized(detail.replace(/^The token /, 'Token '))
    case 'FAST_JWT_INVALID_CLAIM_VALUE': {
      // "The iss claim value is not allowed." / "None of aud claim values are allowed." Only iss
      // and aud are matched against allowed values; the expected values are not echoed.
      const claim = /allowed/.test(detail) ? /(?:The|None of) (\w+) claim/.exec(detail)?.[1] : undefined
      if (claim === 'iss') return unauthorized("Token iss claim is not this service's issuer")
      if (claim === 'aud') return unauthorized("Token aud claim does not name this service's audience")
      return unauthorized(`Token rejected: ${detail}`)
    }
    default:
      // claim type/value, crit header...
      return unauthorized(`Token rejected: ${detail}`)
  }
}

/** The raw token of an Authorization header, or a 401 saying exactly what is wrong with it. */
function bearerToken(header: string | undefined): string {
  if (header === undefined || header.trim() === '') {
    throw unauthorized('Missing Authorization header; send "Authorization: Bearer <token>"')
  }
  const match = /^(\S+)(?:\s+(.*))?$/.exec(header.trim())
  const scheme = match?.[1] ?? ''
  if (scheme.toLowerCase() !== 'bearer') {
    throw unauthorized(`Authorization header must use the Bearer scheme, got "${scheme.slice(0, 20)}"`)
  }
  const token = match?.[2]?.trim() ?? ''
  if (token === '') throw unauthorized('Authorization header has no token after "Bearer"')
  if (/\s/.test(token)) throw unauthorized('Malformed Authorization header: expected "Bearer <token>" with one token')
  return token
}

export interface ClaimRules {
  maxLifetimeS: number
  clockSkewS: number
}

/**
 * The time rules fast-jwt does not apply: `iat` is a number not in the future (beyond the skew),
 * and the lifetime (`exp - iat`, or `exp - now` when there is no `iat`) is at most the maximum.
 * Checked on every request, cached tokens included: "now" moves.
 */
export function checkTokenTimes(claims: TokenClaims, rules: ClaimRules, nowS: number = Date.now() / 1000): void {
  const { iat, exp } = claims
  if (iat !== undefined && (typeof iat !== 'number' || !Number.isFinite(iat))) {
    throw unauthorized('Token iat claim must be a number of seconds since 1970-01-01T00:00:00Z')
  }
  if (iat !== undefined && iat > nowS + rules.clockSkewS) {
    throw unauthorized(`Token iat claim is in the future (${new Date(iat * 1000).toISOString()}); ` +
      `tokens issued more than ${rules.clockSkewS} s ahead of this server's clock are refused`)
  }
  // exp is a required number (fast-jwt checked it).
  if (typeof exp !== 'number') return
  if (iat !== undefined) {
    if (exp - iat > rules.maxLifetimeS) {
      throw unauthorized(`Token lifetime (exp - iat) of ${Math.round(exp - iat)} s exceeds the maximum of ${rules.maxLifetimeS} s`)
    }
  } else if (exp - nowS > rules.maxLifetimeS + rules.clockSkewS) {
    throw unauthorized(`Token without iat expires in ${Math.round(exp - nowS)} s, more than the maximum lifetime of ${rules.maxLifetimeS} s`)
  }
}

function isAdmin(claims: TokenClaims): boolean {
  return claims.role === 'admin' || (Array.isArray(claims.roles) && claims.roles.includes('admin'))
}

async function authPlugin(app: FastifyInstance, options: AuthPluginOptions): Promise<void> {
  const { config, provisionUser } = options
  const algorithms = algorithmsFor(config)
  const secret = config.jwt.publicKey ? { public: config.jwt.publicKey } : config.jwt.secret
  if (!secret) throw new Error('auth: config.jwt has neither a secret nor a public key')

  const { issuer, audience, maxLifetimeS, clockSkewS } = config.jwt
  await app.register(fastifyJwt, {
    secret,
    ...(config.jwt.publicKey ? {} : { sign: { algorithm: 'HS256' as const } }),
    verify: {
      algorithms,
      // fast-jwt skips allowedIss/allowedAud for a token without the claim: require it then.
      requiredClaims: ['exp', ...(issuer !== undefined ? ['iss'] : []), ...(audience !== undefined ? ['aud'] : [])],
      ...(issuer !== undefined && { allowedIss: issuer }),
      ...(audience !== undefined && { allowedAud: audience }),
      // Milliseconds, for exp and nbf.
      clockTolerance: clockSkewS * 1000,
      // Verified tokens are cached (bounded by their exp); failures are never cached.
      cache: 10_000,
    },
  })
  const rules: ClaimRules = { maxLifetimeS, clockSkewS }

  const users = new LRUCache<string, { username: string }, { username: string | undefined }>({
    max: options.userCacheSize ?? 100_000,
    ttl: options.userCacheTtlMs ?? 900_000,
    fetchMethod: async (id, _stale, { context }) => {
      const row = await provisionUser(id, context.username)
      return { username: row.username }
    },
  })

  async function provision(request: FastifyRequest, id: string, claimed: string | undefined): Promise<string> {
    try {
      const user = await users.fetch(id, { context: { username: claimed } })
      if (user) return user.username
    } catch (err) {
      request.log.error({ err, userId: id }, 'cannot provision user')
    }
    throw new HttpError(503, 'Service not available', 'Cannot register a new user right now; try again shortly', {}, { 'Retry-After': '1' })
  }

  const authenticate: AuthHook = async (request) => {
    const token = bearerToken(request.headers.authorization)
    let claims: TokenClaims
    try {
      claims = app.jwt.verify<TokenClaims>(token)
    } catch (err) {
      const header = (): { alg?: unknown } | undefined => {
        try {
          return app.jwt.decode<{ header: { alg?: unknown } }>(token, { complete: true })?.header
        } catch {
          return undefined
        }
      }
      throw tokenError(err, algorithms, header) ?? err
    }
    checkTokenTimes(claims, rules)
    if (typeof claims.sub !== 'string' || !isUuid(claims.sub)) {
      throw unauthorized('Token sub claim must be a UUID')
    }
    if (claims.sub === NIL_UUID) throw unauthorized('Token sub claim must not be the nil UUID')
    const id = claims.sub.toLowerCase()
    const claimed = typeof claims.username === 'string' && USERNAME.test(claims.username.trim())
      ? claims.username.trim()
      : undefined
    const username = await provision(request, id, claimed)
    request.user = { id, username, admin: isAdmin(claims) }
  }

  const requireAdmin: AuthHook = async (request, reply) => {
    await authenticate(request, reply)
    if (!request.user.admin) throw new HttpError(403, 'Forbidden', 'This route requires an admin token')
  }

  app.decorate('authenticate', authenticate)
  app.decorate('requireUser', authenticate)
  app.decorate('requireAdmin', requireAdmin)
}

export default fp(authPlugin, { fastify: '5.x', name: 'quota-auth' })

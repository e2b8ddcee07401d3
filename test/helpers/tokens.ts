/**
 * JWTs for tests, built by hand with node:crypto: a test of the auth layer should not trust the
 * same library that verifies, and negative cases (alg none, expired, wrong key, junk) need tokens
 * no well-behaved library would sign.
 */
import { createHmac } from 'node:crypto'

export interface SignTokenOptions {
  /** User id (UUID) — the `sub` claim. */
  sub: string
  /** HS256 secret (the service's JWT_SECRET). */
  secret: string
  role?: string
  roles?: string[]
  username?: string
  /**
   * Lifetime: seconds, or a string like `90s`, `15m`, `1h`, `2d`; negative for an already expired
   * token (`-1h`). @default '1h'
   */
  expiresIn?: number | string
  /** The `iss` claim (the service's JWT_ISSUER). @default none */
  iss?: string
  /** The `aud` claim (one of the service's JWT_AUDIENCE, or a list). @default none */
  aud?: string | string[]
  /**
   * Issued-at, seconds since the epoch; `exp` counts from it. `null` leaves iat out (exp then
   * counts from now). @default now
   */
  iat?: number | null
  /** Extra or overriding claims (e.g. `{ exp: undefined }` to leave exp out). */
  claims?: Record<string, unknown>
}

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url')
}

/** `expiresIn` to seconds. */
export function durationSeconds(value: number | string): number {
  if (typeof value === 'number') return value
  const match = /^(-?\d+)\s*([smhd]?)$/.exec(value.trim())
  if (!match) throw new Error(`bad duration: ${value}`)
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86_400 }[match[2] as '' | 's' | 'm' | 'h' | 'd']
  return Number(match[1]) * unit
}

/** A compact JWS: base64url(header).base64url(payload).signature, HS256 signed with `secret`. */
export function signToken(options: SignTokenOptions): string {
  const now = Math.floor(Date.now() / 1000)
  const issuedAt = options.iat === undefined ? now : options.iat
  const payload: Record<string, unknown> = {
    sub: options.sub,
    ...(issuedAt !== null && { iat: issuedAt }),
    exp: (issuedAt ?? now) + durationSeconds(options.expiresIn ?? '1h'),
  }
  if (options.iss !== undefined) payload.iss = options.iss
  if (options.aud !== undefined) payload.aud = options.aud
  if (options.role !== undefined) payload.role = options.role
  if (options.roles !== undefined) payload.roles = options.roles
  if (options.username !== undefined) payload.username = options.username
  for (const [key, value] of Object.entries(options.claims ?? {})) {
    if (value === undefined) delete payload[key]
    else payload[key] = value
  }
  const signingInput = `${base64url({ alg: 'HS256', typ: 'JWT' })}.${base64url(payload)}`
  const signature = createHmac('sha256', options.secret).update(signingInput).digest('base64url')
  return `${signingInput}.${signature}`
}

/**
 * An unsigned token (`alg: none`, empty signature) — the classic forgery the service must answer
 * with 401. Default `exp` = now + 1h so only the missing signature is wrong.
 */
export function unsignedToken(payload: Record<string, unknown>): string {
  const body = { exp: Math.floor(Date.now() / 1000) + 3600, ...payload }
  return `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url(body)}.`
}

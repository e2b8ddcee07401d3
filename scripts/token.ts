/**
 * `npm run token -- --sub <uuid> [--role admin] [--username NAME] [--ttl 1h]`
 *
 * Prints (only) a signed HS256 JWT the running service accepts: the secret is JWT_SECRET, else the
 * git-ignored dev secret file the service itself uses when JWT_SECRET is unset, so a fresh checkout
 * needs no configuration. Notes and errors go to stderr, so `TOKEN=$(npm run -s token)` works.
 *
 * The token always carries `iat`; it carries `iss` = JWT_ISSUER and `aud` = JWT_AUDIENCE when
 * those are set (the service then requires them), and a --ttl beyond JWT_MAX_LIFETIME_S is refused
 * here rather than by the service.
 */
import { randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'
import { createSigner } from 'fast-jwt'
import { isUuid } from '../src/ids.ts'
import { DEV_SECRET_FILE, EnvSchema, devSecret } from '../src/config.ts'

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 }
const USAGE = 'usage: npm run token -- --sub <uuid> [--role admin] [--username NAME] [--ttl 1h]'

function fail(message: string): never {
  console.error(`token: ${message}`)
  console.error(USAGE)
  process.exit(1)
}

/** "30s", "15m", "1h", "7d" -> seconds. */
function parseTtl(text: string): number {
  const match = /^(\d+)([smhd])$/.exec(text.trim())
  if (!match) fail(`--ttl must look like 30s, 15m, 1h or 7d, got "${text}"`)
  const seconds = Number(match[1]) * (UNITS[match[2] as string] ?? 0)
  if (seconds <= 0) fail('--ttl must be greater than 0')
  return seconds
}

/** JWT_MAX_LIFETIME_S as the service reads it (its default when unset or not a whole number). */
function maxLifetimeS(): number {
  const raw = process.env.JWT_MAX_LIFETIME_S?.trim()
  const fallback = (EnvSchema.properties.JWT_MAX_LIFETIME_S as { default?: number }).default ?? 2_592_000
  return raw && /^\d+$/.test(raw) ? Number(raw) : fallback
}

/** JWT_AUDIENCE as the service reads it: comma-separated, blanks dropped. */
function audience(): string[] {
  return (process.env.JWT_AUDIENCE ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '')
}

function main(): void {
  let values: { sub?: string; role?: string; username?: string; ttl?: string; help?: boolean }
  try {
    ;({ values } = parseArgs({
      options: {
        sub: { type: 'string' },
        role: { type: 'string' },
        username: { type: 'string' },
        ttl: { type: 'string', default: '1h' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }))
  } catch (err) {
    fail((err as Error).message)
  }
  if (values.help) {
    console.error(USAGE)
    return
  }

  if (values.sub !== undefined && !isUuid(values.sub)) fail(`--sub must be a UUID, got "${values.sub}"`)
  if (values.role !== undefined && values.role !== 'admin') fail(`--role accepts only "admin", got "${values.role}"`)
  const ttl = parseTtl(values.ttl ?? '1h')
  const maxTtl = maxLifetimeS()
  if (ttl > maxTtl) fail(`--ttl ${values.ttl} is longer than JWT_MAX_LIFETIME_S (${maxTtl} s); the service would refuse the token`)
  const sub = values.sub ?? randomUUID()
  if (values.sub === undefined) console.error(`token: no --sub given; using a new random user id ${sub}`)

  const envSecret = process.env.JWT_SECRET
  if (process.env.JWT_PUBLIC_KEY) {
    console.error('token: JWT_PUBLIC_KEY is set, so the service verifies RS256/ES256 tokens from your issuer; ' +
      'this HS256 token will be refused by it')
  }
  if (envSecret !== undefined && envSecret !== '' && Buffer.byteLength(envSecret) < 32) {
    fail('JWT_SECRET must be at least 32 bytes')
  }
  // Same file and same rules as the service (src/config.ts), so the two always agree.
  const secret = envSecret || devSecret()
  if (!envSecret) console.error(`token: signed with the dev secret in ${DEV_SECRET_FILE}`)

  const claims: Record<string, unknown> = { sub }
  if (values.role) claims.role = values.role
  if (values.username) claims.username = values.username
  const issuer = process.env.JWT_ISSUER
  const audiences = audience()
  const sign = createSigner({
    key: secret,
    algorithm: 'HS256',
    expiresIn: ttl * 1000,
    // iat is what the service measures the lifetime from (exp - iat <= JWT_MAX_LIFETIME_S).
    noTimestamp: false,
    ...(issuer ? { iss: issuer } : {}),
    ...(audiences.length > 0 ? { aud: audiences.length === 1 ? audiences[0] : audiences } : {}),
  })
  process.stdout.write(`${sign(claims)}\n`)
}

main()

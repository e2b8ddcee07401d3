/**
 * `npm run token -- --sub <uuid> [--role admin] [--username NAME] [--ttl 1h]`
 *
 * Prints (only) a signed HS256 JWT the running service accepts: the secret is JWT_SECRET, else the
 * git-ignored dev secret file the service itself uses when JWT_SECRET is unset, so a fresh checkout
 * needs no configuration. Notes and errors go to stderr, so `TOKEN=$(npm run -s token)` works.
 */
import { randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'
import { createSigner } from 'fast-jwt'
import { isUuid } from '../src/ids.ts'
import { DEV_SECRET_FILE, devSecret } from '../src/config.ts'

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
  const sign = createSigner({ key: secret, algorithm: 'HS256', expiresIn: ttl * 1000 })
  process.stdout.write(`${sign(claims)}\n`)
}

main()

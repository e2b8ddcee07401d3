/**
 * Environment -> one typed Config, validated once at start. A bad value stops the start with a
 * ConfigError whose message names the variable.
 *
 * `EnvSchema` is the one description of the environment: every variable with its type, default,
 * bounds or pattern, and meaning. Reading the environment is three steps: turn the strings into
 * the schema's types (`readEnv`), let TypeBox fill defaults and validate, then the few rules a
 * schema cannot state (URL protocols, byte lengths, PEM parsing, relations between variables).
 */
import { createPublicKey, randomBytes } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { Type } from 'typebox'
import type { Static, TSchema } from 'typebox'
import { Value } from 'typebox/value'

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type FailMode = 'open' | 'closed'
export type LogLevel = (typeof LOG_LEVELS)[number]

/** A whole number with its default and bounds: most variables are one. */
const Int = (def: number, min: number, max: number, description: string) =>
  Type.Integer({ default: def, minimum: min, maximum: max, description })

/**
 * Keys are the variable names, so a validation error's path is the variable to name. `expected`
 * (not a JSON Schema keyword, ignored by validation) is the error phrase where the type alone
 * cannot give one.
 */
export const EnvSchema = Type.Object({
  NODE_ENV: Type.Optional(Type.String({ description: '"production" requires a configured JWT key' })),
  PORT: Int(8000, 0, 65535, 'listen port'),
  HOST: Type.String({ default: '127.0.0.1', description: 'listen address' }),
  REDIS_URL: Type.String({ default: 'redis://127.0.0.1:6379', description: 'standalone Redis (redis: or rediss:)' }),
  REDIS_KEY_PREFIX: Type.String({
    default: 'quota:', pattern: '^[^{}\\s]*$', description: 'prefix of every Redis key',
    expected: 'free of braces and spaces (they would break hash tags)',
  }),
  REDIS_ALLOW_NO_PERSISTENCE: Type.Boolean({
    default: false, description: 'with NODE_ENV=production, allow a Redis without AOF or RDB persistence',
  }),
  DATABASE_URL: Type.String({
    default: 'postgres://postgres@127.0.0.1:5432/quota', description: 'Postgres (postgres: or postgresql:)',
  }),
  // writeOnly: never echoed in an error message.
  JWT_SECRET: Type.Optional(Type.String({ writeOnly: true, description: 'HS256 secret, at least 32 bytes' })),
  JWT_PUBLIC_KEY: Type.Optional(Type.String({ writeOnly: true, description: 'PEM public key: RS256/ES256, not HS256' })),
  JWT_ISSUER: Type.Optional(Type.String({ description: "when set, a token's iss must equal it" })),
  JWT_AUDIENCE: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
    minItems: 1, description: "comma-separated; when set, a token's aud must contain one of them",
    expected: 'a comma-separated list of audiences',
  })),
  JWT_MAX_LIFETIME_S: Int(2_592_000, 60, 31_536_000, 'longest token lifetime: exp - iat, or exp - now without iat'),
  JWT_CLOCK_SKEW_S: Int(30, 0, 300, 'allowance for exp, nbf and iat in the future'),
  HTTP_REQUEST_TIMEOUT_MS: Int(10_000, 1000, 600_000, 'longest time to receive a whole request'),
  HTTP_HEADERS_TIMEOUT_MS: Int(5000, 1000, 600_000, 'longest time to receive the headers'),
  HTTP_KEEP_ALIVE_TIMEOUT_MS: Int(72_000, 1000, 600_000, 'idle keep-alive connections are closed after this'),
  DOCS_ENABLED: Type.Boolean({ default: true, description: 'serves /docs and /docs/json' }),
  USAGE_FAIL_MODE: Type.Enum(['closed', 'open'], { default: 'closed', description: 'when Redis cannot be reached' }),
  REDIS_COMMAND_TIMEOUT_MS: Int(250, 1, 60_000, 'the longest a decision waits for Redis'),
  FLUSH_INTERVAL_MS: Int(1000, 10, 3_600_000, 'Redis -> Postgres flush period'),
  IDEMPOTENCY_KEYS_PER_USER: Int(10_000, 1, 1_000_000, 'most idempotency keys one user holds at once (24 h each)'),
  DEFAULT_TIER: Type.String({
    default: 'free', pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'tier of a user first seen',
    expected: 'a tier name (letters, digits, _ or -)',
  }),
  DEMO_ROUTES: Type.Boolean({ default: true, description: 'mounts POST /api/deploy' }),
  LOG_LEVEL: Type.Enum(LOG_LEVELS, { default: 'info', description: 'pino level' }),
})
type Env = Record<string, string | undefined>
type EnvValues = Static<typeof EnvSchema>

export interface JwtConfig {
  /** HS256 secret (>= 32 bytes). */
  secret?: string
  /** PEM public key for RS256/ES256 tokens. */
  publicKey?: string
  /** Where the key came from, for the start-up log (never the key itself). */
  source: 'JWT_SECRET' | 'JWT_PUBLIC_KEY' | 'dev-secret-file'
  /** JWT_ISSUER: a token's `iss` must equal it. */
  issuer?: string
  /** JWT_AUDIENCE: a token's `aud` must contain one of them. */
  audience?: string[]
  /** JWT_MAX_LIFETIME_S */
  maxLifetimeS: number
  /** JWT_CLOCK_SKEW_S */
  clockSkewS: number
}

export interface HttpConfig {
  /** HTTP_REQUEST_TIMEOUT_MS */
  requestTimeoutMs: number
  /** HTTP_HEADERS_TIMEOUT_MS (<= requestTimeoutMs) */
  headersTimeoutMs: number
  /** HTTP_KEEP_ALIVE_TIMEOUT_MS */
  keepAliveTimeoutMs: number
}

/** Defaults, bounds and meanings: EnvSchema. */
export interface Config {
  port: number
  host: string
  redisUrl: string
  /** Prefix of every Redis key; lets several deployments (or test runs) share one Redis. */
  redisKeyPrefix: string
  redisAllowNoPersistence: boolean
  databaseUrl: string
  jwt: JwtConfig
  http: HttpConfig
  docs: boolean
  usageFailMode: FailMode
  redisCommandTimeoutMs: number
  flushIntervalMs: number
  idempotencyKeysPerUser: number
  defaultTier: string
  demoRoutes: boolean
  logLevel: LogLevel
  production: boolean
}

export class ConfigError extends Error {
  override name = 'ConfigError'
  constructor(readonly variable: string, message: string) {
    super(`${variable}: ${message}`)
  }
}

/** The dev secret shared by the service and `npm run token`; git-ignored. */
export const DEV_SECRET_FILE = '.quota-dev-secret'

const BOOLEANS = new Map([
  ['1', true], ['true', true], ['yes', true], ['on', true],
  ['0', false], ['false', false], ['no', false], ['off', false],
])

/**
 * One variable's string as the type its schema wants. A string that does not convert is passed
 * on unchanged, so validation refuses it. Not TypeBox's Value.Convert: that truncates "1.5" to
 * 1 and reads "" as 0, where an operator's typo must stop the start.
 */
function fromString(schema: TSchema, raw: string): unknown {
  const value = raw.trim()
  if (Type.IsInteger(schema)) return /^\d+$/.test(value) ? Number(value) : raw
  if (Type.IsBoolean(schema)) return BOOLEANS.get(value.toLowerCase()) ?? raw
  if (Type.IsEnum(schema)) return value.toLowerCase()
  if (Type.IsArray(schema)) return raw.split(',').map((s) => s.trim()).filter((s) => s !== '')
  return raw
}

/** The keywords of EnvSchema that error messages read (TSchema declares none of them). */
type Keywords = { expected?: string; minimum?: number; maximum?: number; writeOnly?: boolean }

/** The phrase after "must be" for a value the schema refuses. */
function expectation(schema: TSchema & Keywords): string {
  const { expected, minimum, maximum } = schema
  if (expected !== undefined) return expected
  if (Type.IsInteger(schema)) return `a whole number from ${minimum} to ${maximum}`
  if (Type.IsBoolean(schema)) return 'true or false (or 1/0, yes/no, on/off)'
  if (Type.IsEnum(schema)) return `one of ${schema.enum.join(', ')}`
  return 'valid'
}

/** The schema step: env strings -> typed values with defaults, or the first refusal. */
function readEnv(env: Env): EnvValues {
  const properties: Record<string, TSchema & Keywords> = EnvSchema.properties
  const values: Record<string, unknown> = {}
  for (const [name, schema] of Object.entries(properties)) {
    const raw = env[name]
    // An empty variable (`PORT=` in an env file) means unset, as in most shells' tooling.
    if (raw !== undefined && raw !== '') values[name] = fromString(schema, raw)
  }
  Value.Default(EnvSchema, values)
  if (Value.Check(EnvSchema, values)) return values
  const [error] = Value.Errors(EnvSchema, values)
  const name = error?.instancePath.split('/')[1] ?? '(environment)'
  const schema = properties[name]
  const detail = schema ? `must be ${expectation(schema)}` : (error?.message ?? 'is invalid')
  const shown = schema?.writeOnly ? '(hidden)' : `"${env[name] ?? ''}"`
  throw new ConfigError(name, `${detail}, got ${shown}`)
}

function checkUrl(name: string, raw: string, protocols: readonly string[]): string {
  let parsed: URL
  try {
    parsed = new URL(raw)
  } catch {
    throw new ConfigError(name, `must be a ${protocols.join(' or ')} URL, got "${raw}"`)
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new ConfigError(name, `must use ${protocols.join(' or ')}, got "${parsed.protocol}"`)
  }
  return raw
}

/** Reads or creates the git-ignored development secret. */
export function devSecret(cwd: string = process.cwd()): string {
  const file = resolve(cwd, DEV_SECRET_FILE)
  if (existsSync(file)) {
    const secret = readFileSync(file, 'utf8').trim()
    if (Buffer.byteLength(secret) >= 32) return secret
  }
  const secret = randomBytes(32).toString('base64url')
  writeFileSync(file, `${secret}\n`, { mode: 0o600 })
  return secret
}

/** The verification key. Runs last: it may write the dev secret file. */
function jwtKey(env: EnvValues, production: boolean, cwd: string): Pick<JwtConfig, 'secret' | 'publicKey' | 'source'> {
  const { JWT_SECRET: secret, JWT_PUBLIC_KEY: publicKey } = env
  if (publicKey !== undefined && secret !== undefined) {
    throw new ConfigError('JWT_PUBLIC_KEY', 'set either JWT_PUBLIC_KEY (RS256/ES256) or JWT_SECRET (HS256), not both')
  }
  if (publicKey !== undefined) {
    if (!publicKey.includes('-----BEGIN')) {
      throw new ConfigError('JWT_PUBLIC_KEY', 'must be a PEM public key (-----BEGIN PUBLIC KEY----- ...)')
    }
    // Keys passed through env files often carry literal "\n".
    const pem = publicKey.replace(/\\n/g, '\n')
    // Parse it now: a truncated or mangled PEM must stop the start, not fail every request later.
    try {
      createPublicKey(pem)
    } catch (err) {
      throw new ConfigError('JWT_PUBLIC_KEY', `is not a readable PEM public key (${(err as Error).message})`)
    }
    return { publicKey: pem, source: 'JWT_PUBLIC_KEY' }
  }
  if (secret !== undefined) {
    // Bytes, not characters: HS256's strength is the key's bytes (RFC 7518 3.2).
    if (Buffer.byteLength(secret) < 32) {
      throw new ConfigError('JWT_SECRET', `must be at least 32 bytes, got ${Buffer.byteLength(secret)}`)
    }
    return { secret, source: 'JWT_SECRET' }
  }
  if (production) {
    throw new ConfigError('JWT_SECRET', 'is required when NODE_ENV=production (or set JWT_PUBLIC_KEY)')
  }
  return { secret: devSecret(cwd), source: 'dev-secret-file' }
}

export interface LoadConfigOptions {
  /** Directory of the dev secret file. @default process.cwd() */
  cwd?: string
}

export function loadConfig(env: Env = process.env, options: LoadConfigOptions = {}): Config {
  const vars = readEnv(env)
  const production = vars.NODE_ENV === 'production'
  if (vars.HTTP_HEADERS_TIMEOUT_MS > vars.HTTP_REQUEST_TIMEOUT_MS) {
    throw new ConfigError('HTTP_HEADERS_TIMEOUT_MS', `must not exceed HTTP_REQUEST_TIMEOUT_MS ` +
      `(${vars.HTTP_REQUEST_TIMEOUT_MS}), got ${vars.HTTP_HEADERS_TIMEOUT_MS}`)
  }
  const config = {
    port: vars.PORT,
    host: vars.HOST,
    redisUrl: checkUrl('REDIS_URL', vars.REDIS_URL, ['redis:', 'rediss:']),
    redisKeyPrefix: vars.REDIS_KEY_PREFIX,
    redisAllowNoPersistence: vars.REDIS_ALLOW_NO_PERSISTENCE,
    databaseUrl: checkUrl('DATABASE_URL', vars.DATABASE_URL, ['postgres:', 'postgresql:']),
    http: {
      requestTimeoutMs: vars.HTTP_REQUEST_TIMEOUT_MS,
      headersTimeoutMs: vars.HTTP_HEADERS_TIMEOUT_MS,
      keepAliveTimeoutMs: vars.HTTP_KEEP_ALIVE_TIMEOUT_MS,
    },
    docs: vars.DOCS_ENABLED,
    usageFailMode: vars.USAGE_FAIL_MODE,
    redisCommandTimeoutMs: vars.REDIS_COMMAND_TIMEOUT_MS,
    flushIntervalMs: vars.FLUSH_INTERVAL_MS,
    idempotencyKeysPerUser: vars.IDEMPOTENCY_KEYS_PER_USER,
    defaultTier: vars.DEFAULT_TIER,
    demoRoutes: vars.DEMO_ROUTES,
    logLevel: vars.LOG_LEVEL,
    production,
  }
  const jwt: JwtConfig = {
    // Last: only a configuration that is otherwise valid may create the dev secret file.
    ...jwtKey(vars, production, options.cwd ?? process.cwd()),
    ...(vars.JWT_ISSUER !== undefined && { issuer: vars.JWT_ISSUER }),
    ...(vars.JWT_AUDIENCE !== undefined && { audience: vars.JWT_AUDIENCE }),
    maxLifetimeS: vars.JWT_MAX_LIFETIME_S,
    clockSkewS: vars.JWT_CLOCK_SKEW_S,
  }
  return { ...config, jwt }
}

/** A connection URL as it may be logged: the password replaced by ***. */
export function redactUrl(raw: string): string {
  try {
    const u = new URL(raw)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return raw
  }
}

/** The config as it may be logged: URLs without passwords, no secrets. */
export function redactedConfig(config: Config): Record<string, unknown> {
  // Listed field by field, so a key field added to JwtConfig later is not logged by accident.
  const { source, issuer, audience, maxLifetimeS, clockSkewS, publicKey } = config.jwt
  return {
    ...config,
    redisUrl: redactUrl(config.redisUrl),
    databaseUrl: redactUrl(config.databaseUrl),
    jwt: { source, algorithm: publicKey ? 'RS256/ES256' : 'HS256', issuer, audience, maxLifetimeS, clockSkewS },
  }
}

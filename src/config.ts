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
import { EnvSchema } from './env-schema.ts'
import type { LOG_LEVELS } from './env-schema.ts'

export { EnvSchema }

export type FailMode = 'open' | 'closed'
/**
 * embedded: counters in the process, history in PGlite in a data folder (nothing but Node needed).
 * redis: counters in one Redis, history in Postgres. cluster: counters in a Redis Cluster
 * (REDIS_CLUSTER_NODES), history in Postgres.
 */
export type DeploymentMode = 'embedded' | 'redis' | 'cluster'
export type LogLevel = (typeof LOG_LEVELS)[number]

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
  /** Chosen by which of REDIS_URL, REDIS_CLUSTER_NODES, DATABASE_URL are set (modeOf). */
  mode: DeploymentMode
  port: number
  host: string
  /** Set exactly in mode redis. */
  redisUrl?: string
  /** Set exactly in mode cluster: the seed nodes. */
  redisClusterNodes?: { host: string; port: number }[]
  /** Prefix of every Redis key; lets several deployments (or test runs) share one Redis. */
  redisKeyPrefix: string
  /** Buckets users are spread over (REDIS_BUCKETS): one hash tag, so one cluster slot, each. */
  redisBuckets: number
  /** Replicas a decision must reach before it is answered (REDIS_WAIT_REPLICAS). */
  redisWaitReplicas: number
  redisAllowNoPersistence: boolean
  /** Set exactly in modes redis and cluster. */
  databaseUrl?: string
  /** Embedded mode only: the data folder, absolute (QUOTA_DATA_DIR, else ./data of the working directory). */
  dataDir?: string
  /** Embedded mode only, when set: the port the embedded database is also served on (127.0.0.1). */
  embeddedPgPort?: number
  jwt: JwtConfig
  http: HttpConfig
  /** WEBHOOK_URL and WEBHOOK_SECRET, when set: threshold events are POSTed there (docs/events.md). */
  webhook?: { url: string; secret: string }
  docs: boolean
  usageFailMode: FailMode
  redisCommandTimeoutMs: number
  flushIntervalMs: number
  idempotencyKeysPerUser: number
  /** HISTORY_RETENTION_MONTHS, when set: daily_usage partitions older than this many months are dropped. */
  historyRetentionMonths?: number
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

/** Both WEBHOOK_ variables or neither; an http(s) URL and a key of at least 32 bytes. */
function webhookOf(vars: EnvValues): Config['webhook'] {
  const { WEBHOOK_URL: url, WEBHOOK_SECRET: secret } = vars
  if (url === undefined && secret === undefined) return undefined
  if (url === undefined) throw new ConfigError('WEBHOOK_URL', 'is required with WEBHOOK_SECRET (or unset both: no webhooks)')
  if (secret === undefined) throw new ConfigError('WEBHOOK_SECRET', 'is required with WEBHOOK_URL (the key that signs each webhook)')
  if (Buffer.byteLength(secret) < 32) throw new ConfigError('WEBHOOK_SECRET', `must be at least 32 bytes, got ${Buffer.byteLength(secret)}`)
  return { url: checkUrl('WEBHOOK_URL', url, ['http:', 'https:']), secret }
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

/** The folder embedded mode uses when QUOTA_DATA_DIR is unset (outside production). */
export const DEFAULT_DATA_DIR = './data'

/**
 * The deployment mode from which variables are set, or the one line that says what is missing or
 * too much. A half-configured Redis deployment must stop, never fall back to embedded mode: its
 * counts would silently live in a local folder instead of the shared Redis and Postgres.
 */
function modeOf(vars: EnvValues, production: boolean): DeploymentMode {
  const redisVar = vars.REDIS_URL !== undefined ? 'REDIS_URL' : vars.REDIS_CLUSTER_NODES !== undefined ? 'REDIS_CLUSTER_NODES' : undefined
  if (vars.REDIS_URL !== undefined && vars.REDIS_CLUSTER_NODES !== undefined) {
    throw new ConfigError('REDIS_CLUSTER_NODES', 'set either REDIS_URL (one Redis) or REDIS_CLUSTER_NODES (a Redis Cluster), not both')
  }
  if (redisVar !== undefined && vars.DATABASE_URL === undefined) {
    throw new ConfigError('DATABASE_URL', `is required with ${redisVar} (the Postgres that keeps the history); ` +
      'or unset every one of REDIS_URL, REDIS_CLUSTER_NODES and DATABASE_URL for embedded mode')
  }
  if (redisVar === undefined && vars.DATABASE_URL !== undefined) {
    throw new ConfigError('REDIS_URL', 'is required with DATABASE_URL (or REDIS_CLUSTER_NODES); ' +
      'or unset DATABASE_URL for embedded mode')
  }
  if (redisVar !== undefined) {
    for (const name of ['QUOTA_DATA_DIR', 'EMBEDDED_PG_PORT'] as const) {
      if (vars[name] !== undefined) throw new ConfigError(name, `is for embedded mode only; unset it with ${redisVar}`)
    }
  }
  if (vars.REDIS_CLUSTER_NODES !== undefined) return 'cluster'
  if (redisVar !== undefined) return 'redis'
  if (production && vars.QUOTA_DATA_DIR === undefined) {
    throw new ConfigError('QUOTA_DATA_DIR', 'with NODE_ENV=production, set REDIS_URL and DATABASE_URL, ' +
      'or set QUOTA_DATA_DIR to run embedded mode (one process, counters in memory) deliberately')
  }
  return 'embedded'
}

/** REDIS_CLUSTER_NODES' `host:port` items (the schema checked their shape) with ports in range. */
function clusterNodesOf(items: readonly string[]): { host: string; port: number }[] {
  return items.map((item) => {
    const colon = item.lastIndexOf(':')
    const port = Number(item.slice(colon + 1))
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new ConfigError('REDIS_CLUSTER_NODES', `"${item}" has no port from 1 to 65535`)
    }
    return { host: item.slice(0, colon), port }
  })
}

export function loadConfig(env: Env = process.env, options: LoadConfigOptions = {}): Config {
  const vars = readEnv(env)
  const production = vars.NODE_ENV === 'production'
  const cwd = options.cwd ?? process.cwd()
  const mode = modeOf(vars, production)
  if (vars.HTTP_HEADERS_TIMEOUT_MS > vars.HTTP_REQUEST_TIMEOUT_MS) {
    throw new ConfigError('HTTP_HEADERS_TIMEOUT_MS', `must not exceed HTTP_REQUEST_TIMEOUT_MS ` +
      `(${vars.HTTP_REQUEST_TIMEOUT_MS}), got ${vars.HTTP_HEADERS_TIMEOUT_MS}`)
  }
  const webhook = webhookOf(vars)
  const config = {
    mode,
    port: vars.PORT,
    host: vars.HOST,
    ...(mode === 'redis' && {
      redisUrl: checkUrl('REDIS_URL', vars.REDIS_URL ?? '', ['redis:', 'rediss:']),
      databaseUrl: checkUrl('DATABASE_URL', vars.DATABASE_URL ?? '', ['postgres:', 'postgresql:']),
    }),
    ...(mode === 'cluster' && {
      redisClusterNodes: clusterNodesOf(vars.REDIS_CLUSTER_NODES ?? []),
      databaseUrl: checkUrl('DATABASE_URL', vars.DATABASE_URL ?? '', ['postgres:', 'postgresql:']),
    }),
    ...(mode === 'embedded' && {
      dataDir: resolve(cwd, vars.QUOTA_DATA_DIR ?? DEFAULT_DATA_DIR),
      ...(vars.EMBEDDED_PG_PORT !== undefined && { embeddedPgPort: vars.EMBEDDED_PG_PORT }),
    }),
    ...(webhook !== undefined && { webhook }),
    redisKeyPrefix: vars.REDIS_KEY_PREFIX,
    redisBuckets: vars.REDIS_BUCKETS,
    redisWaitReplicas: vars.REDIS_WAIT_REPLICAS,
    redisAllowNoPersistence: vars.REDIS_ALLOW_NO_PERSISTENCE,
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
    ...(vars.HISTORY_RETENTION_MONTHS !== undefined && { historyRetentionMonths: vars.HISTORY_RETENTION_MONTHS }),
    defaultTier: vars.DEFAULT_TIER,
    demoRoutes: vars.DEMO_ROUTES,
    logLevel: vars.LOG_LEVEL,
    production,
  }
  const jwt: JwtConfig = {
    // Last: only a configuration that is otherwise valid may create the dev secret file.
    ...jwtKey(vars, production, cwd),
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
    ...(config.redisUrl !== undefined && { redisUrl: redactUrl(config.redisUrl) }),
    ...(config.databaseUrl !== undefined && { databaseUrl: redactUrl(config.databaseUrl) }),
    ...(config.webhook !== undefined && { webhook: { url: redactUrl(config.webhook.url) } }),
    jwt: { source, algorithm: publicKey ? 'RS256/ES256' : 'HS256', issuer, audience, maxLifetimeS, clockSkewS },
  }
}

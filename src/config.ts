/**
 * Environment -> one typed Config, validated once at start. A bad value stops the start with a
 * ConfigError whose message names the variable.
 */
import { createPublicKey, randomBytes } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'

export type FailMode = 'open' | 'closed'
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

export interface JwtConfig {
  /** HS256 secret (>= 32 bytes). */
  secret?: string
  /** PEM public key for RS256/ES256 tokens. */
  publicKey?: string
  /** Where the key came from, for the start-up log (never the key itself). */
  source: 'JWT_SECRET' | 'JWT_PUBLIC_KEY' | 'dev-secret-file'
}

export interface Config {
  /** @default 8000 */
  port: number
  /** @default '127.0.0.1' */
  host: string
  /** @default 'redis://127.0.0.1:6379' */
  redisUrl: string
  /** Prefix of every Redis key; lets several deployments (or test runs) share one Redis. @default 'quota:' */
  redisKeyPrefix: string
  /** @default 'postgres://postgres@127.0.0.1:5432/quota' */
  databaseUrl: string
  jwt: JwtConfig
  /** @default 'closed' */
  usageFailMode: FailMode
  /** @default 250 */
  redisCommandTimeoutMs: number
  /** @default 1000 */
  flushIntervalMs: number
  /** @default 'free' */
  defaultTier: string
  /** @default true */
  demoRoutes: boolean
  /** @default 'info' */
  logLevel: LogLevel
  production: boolean
}

export class ConfigError extends Error {
  override name = 'ConfigError'
  constructor(readonly variable: string, message: string) {
    super(`${variable}: ${message}`)
  }
}

type Env = Record<string, string | undefined>

/** The dev secret shared by the service and `npm run token`; git-ignored. */
export const DEV_SECRET_FILE = '.quota-dev-secret'

function str(env: Env, name: string, fallback: string): string {
  const value = env[name]
  return value === undefined || value === '' ? fallback : value
}

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  if (!/^\d+$/.test(raw.trim())) throw new ConfigError(name, `must be a whole number, got "${raw}"`)
  const value = Number(raw)
  if (value < min || value > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${value}`)
  return value
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  const v = raw.trim().toLowerCase()
  if (['1', 'true', 'yes', 'on'].includes(v)) return true
  if (['0', 'false', 'no', 'off'].includes(v)) return false
  throw new ConfigError(name, `must be true or false, got "${raw}"`)
}

function oneOf<T extends string>(env: Env, name: string, fallback: T, allowed: readonly T[]): T {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  const v = raw.trim().toLowerCase()
  if (!(allowed as readonly string[]).includes(v)) {
    throw new ConfigError(name, `must be one of ${allowed.join(', ')}, got "${raw}"`)
  }
  return v as T
}

function url(env: Env, name: string, fallback: string, protocols: readonly string[]): string {
  const raw = str(env, name, fallback)
  let parsed: URL
  try {
    parsed = new URL(raw)
  } catch {
    throw new ConfigError(name, `must be a URL like ${fallback}, got "${raw}"`)
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

function jwtConfig(env: Env, production: boolean, cwd: string): JwtConfig {
  const secret = env.JWT_SECRET
  const publicKey = env.JWT_PUBLIC_KEY
  if (publicKey !== undefined && publicKey !== '' && secret !== undefined && secret !== '') {
    throw new ConfigError('JWT_PUBLIC_KEY', 'set either JWT_PUBLIC_KEY (RS256/ES256) or JWT_SECRET (HS256), not both')
  }
  if (publicKey !== undefined && publicKey !== '') {
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
  if (secret !== undefined && secret !== '') {
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
  const production = env.NODE_ENV === 'production'
  const defaultTier = str(env, 'DEFAULT_TIER', 'free')
  if (!/^[a-z0-9_-]{1,64}$/i.test(defaultTier)) {
    throw new ConfigError('DEFAULT_TIER', `must be a tier name (letters, digits, _ or -), got "${defaultTier}"`)
  }
  const redisKeyPrefix = str(env, 'REDIS_KEY_PREFIX', 'quota:')
  if (/[{}\s]/.test(redisKeyPrefix)) {
    throw new ConfigError('REDIS_KEY_PREFIX', 'must not contain braces or spaces (they would break hash tags)')
  }
  const config = {
    port: int(env, 'PORT', 8000, 0, 65535),
    host: str(env, 'HOST', '127.0.0.1'),
    redisUrl: url(env, 'REDIS_URL', 'redis://127.0.0.1:6379', ['redis:', 'rediss:']),
    redisKeyPrefix,
    databaseUrl: url(env, 'DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/quota', ['postgres:', 'postgresql:']),
    usageFailMode: oneOf(env, 'USAGE_FAIL_MODE', 'closed', ['open', 'closed'] as const),
    redisCommandTimeoutMs: int(env, 'REDIS_COMMAND_TIMEOUT_MS', 250, 1, 60_000),
    flushIntervalMs: int(env, 'FLUSH_INTERVAL_MS', 1000, 10, 3_600_000),
    defaultTier,
    demoRoutes: bool(env, 'DEMO_ROUTES', true),
    logLevel: oneOf(env, 'LOG_LEVEL', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const),
    production,
  }
  // Last: only a configuration that is otherwise valid may create the dev secret file.
  return { ...config, jwt: jwtConfig(env, production, options.cwd ?? process.cwd()) }
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
  return {
    ...config,
    redisUrl: redactUrl(config.redisUrl),
    databaseUrl: redactUrl(config.databaseUrl),
    jwt: { source: config.jwt.source, algorithm: config.jwt.publicKey ? 'RS256/ES256' : 'HS256' },
  }
}

/**
 * Start-up checks of the two servers the service needs, each answering with ONE operator-readable
 * problem (which server, at which address with the password hidden, how to start it) instead of a
 * stack trace. Postgres also gets its database created when missing and its migrations applied.
 */
import type { Logger } from 'pino'
import type { Config } from './config.ts'
import { createRedisClient, connectRedis, redactUrl } from './counters/redis/client.ts'
import { readRedisSettings, restartLoses } from './counters/redis/settings-check.ts'
import { createPool, ensureDatabase } from './db/client.ts'
import { migrate } from './db/migrate.ts'

/** Errors that mean "the server is not there", as opposed to a refusal from a running server. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ETIMEDOUT', 'ECONNRESET', 'EAI_AGAIN', '57P03'])

/**
 * Creates the database if missing, applies pending migrations and checks DEFAULT_TIER exists.
 * Returns the problem to print, or undefined when Postgres is ready.
 */
export async function preparePostgres(config: Config, log: Logger): Promise<string | undefined> {
  const where = redactUrl(config.databaseUrl)
  try {
    if (await ensureDatabase(config.databaseUrl)) log.info({ database: where }, 'created database')
  } catch (err) {
    const code = (err as { code?: string }).code ?? ''
    const cause = code ? `${code}: ${(err as Error).message}` : (err as Error).message
    if (UNREACHABLE.has(code) || /timeout|terminated/i.test((err as Error).message)) {
      return `quota: cannot reach Postgres at ${where} (${cause}).\n` +
        '  Start it with: docker compose up -d postgres\n' +
        '  or, installed locally: pg_ctlcluster 15 main start  (or: sudo systemctl start postgresql)'
    }
    return `quota: Postgres at ${where} refused to prepare the database (${cause})`
  }
  try {
    const applied = await migrate(config.databaseUrl)
    log.info({ applied }, applied.length > 0 ? 'applied migrations' : 'database schema is up to date')
  } catch (err) {
    return `quota: migrating ${where} failed: ${(err as Error).message}`
  }
  // A DEFAULT_TIER missing from usage_limits would make every new user's first request fail.
  const pool = createPool(config.databaseUrl, { max: 1 })
  try {
    const { rows } = await pool.query<{ tier: string }>('SELECT tier FROM usage_limits ORDER BY tier')
    const tiers = rows.map((r) => r.tier)
    if (!tiers.includes(config.defaultTier)) {
      return `quota: configuration error: DEFAULT_TIER: "${config.defaultTier}" is not a tier in usage_limits (tiers: ${tiers.join(', ')})`
    }
  } finally {
    await pool.end()
  }
  return undefined
}

/**
 * Connects and PINGs once; in production also refuses a Redis that keeps nothing on disk (unless
 * REDIS_ALLOW_NO_PERSISTENCE=true): after its restart the counters come back from Postgres only
 * up to the last flush, and idempotency keys of the last flush interval are forgotten. Returns the
 * problem to print, or undefined when Redis is fit.
 */
export async function checkRedis(config: Config): Promise<string | undefined> {
  // A throwaway connection: the app opens its own. Failing here gives the operator a clear line.
  const probe = createRedisClient({ url: config.redisUrl, commandTimeoutMs: 2000, connectionName: 'quota-preflight' })
  // ioredis' connect() only says "Connection is closed"; the socket error says why (ECONNREFUSED...).
  let socketError: Error | undefined
  probe.on('error', (err: Error) => {
    socketError ??= err
  })
  try {
    await connectRedis(probe, config.redisUrl, 3000)
    await probe.ping()
  } catch (err) {
    const cause = socketError ?? (err as Error)
    probe.disconnect()
    return `quota: cannot reach Redis at ${redactUrl(config.redisUrl)} (${cause.message.replace(/\.+$/, '')}).\n` +
      '  Start it with: docker compose up -d redis\n' +
      '  or, installed locally: redis-server --daemonize yes'
  }
  try {
    if (!config.production || config.redisAllowNoPersistence) return undefined
    if (restartLoses(await readRedisSettings(probe)) !== 'everything') return undefined
    return `quota: Redis at ${redactUrl(config.redisUrl)} keeps nothing on disk (appendonly no, no save rules).\n` +
      '  A Redis restart would lose the changes of the last flush interval. Turn on AOF:\n' +
      '    redis-cli CONFIG SET appendonly yes  (and appendfsync everysec in redis.conf)\n' +
      '  or accept that loss explicitly with REDIS_ALLOW_NO_PERSISTENCE=true'
  } finally {
    probe.disconnect()
  }
}

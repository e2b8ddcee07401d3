/**
 * Start-up checks of the two servers the service needs, each answering with ONE operator-readable
 * problem (which server, at which address with the password hidden, how to start it) instead of a
 * stack trace. Postgres also gets its database created when missing and its migrations applied.
 * Embedded mode has no servers: its preparation takes the data folder, opens the embedded
 * database in it and migrates it (prepareEmbedded).
 */
import type { Logger } from 'pino'
import type { Config } from './config.ts'
import { createClusterClient, createRedisClient, connectRedis, redactUrl } from './counters/redis/client.ts'
import { readRedisSettings, restartLoses } from './counters/redis/settings-check.ts'
import { createPool, ensureDatabase } from './db/client.ts'
import type { Pool } from './db/client.ts'
import { DataFolderLockedError, embeddedDatabaseDir, lockDataFolder } from './db/data-folder.ts'
import { migrate } from './db/migrate.ts'
import { asPool, openEmbeddedDatabase, serveEmbeddedDatabase } from './db/pglite-pool.ts'

/** Errors that mean "the server is not there", as opposed to a refusal from a running server. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ETIMEDOUT', 'ECONNRESET', 'EAI_AGAIN', '57P03'])

/**
 * Creates the database if missing, applies pending migrations and checks DEFAULT_TIER exists.
 * Returns the problem to print, or undefined when Postgres is ready.
 */
export async function preparePostgres(config: Config, log: Logger): Promise<string | undefined> {
  const databaseUrl = config.databaseUrl
  if (databaseUrl === undefined) return 'quota: DATABASE_URL is not set (mode redis needs it)'
  const where = redactUrl(databaseUrl)
  try {
    if (await ensureDatabase(databaseUrl)) log.info({ database: where }, 'created database')
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
    const applied = await migrate(databaseUrl)
    log.info({ applied }, applied.length > 0 ? 'applied migrations' : 'database schema is up to date')
  } catch (err) {
    return `quota: migrating ${where} failed: ${(err as Error).message}`
  }
  const pool = createPool(databaseUrl, { max: 1 })
  try {
    return await checkDefaultTier(pool, config.defaultTier)
  } finally {
    await pool.end()
  }
}

/** A DEFAULT_TIER missing from usage_limits would make every new user's first request fail. */
async function checkDefaultTier(pool: Pool, defaultTier: string): Promise<string | undefined> {
  const { rows } = await pool.query<{ tier: string }>('SELECT tier FROM usage_limits ORDER BY tier')
  const tiers = rows.map((r) => r.tier)
  if (tiers.includes(defaultTier)) return undefined
  return `quota: configuration error: DEFAULT_TIER: "${defaultTier}" is not a tier in usage_limits (tiers: ${tiers.join(', ')})`
}

/** Embedded mode's database, open for this process; close() releases it all, the folder last. */
export interface EmbeddedDatabase {
  pool: Pool
  close(): Promise<void>
}

/**
 * Takes the data folder (one process per folder), opens the embedded database in it, applies
 * pending migrations, checks DEFAULT_TIER and, with EMBEDDED_PG_PORT, serves the database on
 * 127.0.0.1. Returns the database, or the one problem to print (nothing is left open then).
 */
export async function prepareEmbedded(config: Config, log: Logger): Promise<EmbeddedDatabase | string> {
  const dataDir = config.dataDir
  if (dataDir === undefined) return 'quota: embedded mode needs a data folder (QUOTA_DATA_DIR)'
  let lock
  try {
    lock = lockDataFolder(dataDir)
  } catch (err) {
    if (err instanceof DataFolderLockedError) return `quota: ${err.message}`
    return `quota: cannot use the data folder ${dataDir} (${(err as Error).message})`
  }
  const opened: { close?: () => Promise<void> } = {}
  const closeAll = async (): Promise<void> => {
    await opened.close?.().catch(() => {})
    lock.release()
  }
  try {
    const embedded = await openEmbeddedDatabase(embeddedDatabaseDir(dataDir))
    const pool = asPool(embedded)
    opened.close = () => embedded.end()
    const applied = await migrate(pool)
    // Migrations may create types (enums, their arrays): the pool learns them before serving.
    await embedded.refreshTypes()
    log.info({ applied, dataDir }, applied.length > 0 ? 'applied migrations' : 'database schema is up to date')
    const tierProblem = await checkDefaultTier(pool, config.defaultTier)
    if (tierProblem) {
      await closeAll()
      return tierProblem
    }
    let stopServing = async (): Promise<void> => {}
    if (config.embeddedPgPort !== undefined) {
      try {
        stopServing = await serveEmbeddedDatabase(embedded, config.embeddedPgPort)
      } catch (err) {
        await closeAll()
        return `quota: cannot serve the embedded database on 127.0.0.1:${config.embeddedPgPort} ` +
          `(${(err as Error).message}); choose another EMBEDDED_PG_PORT`
      }
      log.info({ port: config.embeddedPgPort }, `embedded database served on 127.0.0.1:${config.embeddedPgPort} ` +
        `(psql -h 127.0.0.1 -p ${config.embeddedPgPort} -U postgres postgres)`)
    }
    let closed: Promise<void> | undefined
    return {
      pool,
      close: () => {
        closed ??= (async () => {
          await stopServing().catch(() => {})
          await closeAll()
        })()
        return closed
      },
    }
  } catch (err) {
    await closeAll()
    return `quota: opening the embedded database in ${dataDir} failed: ${(err as Error).message}`
  }
}

/**
 * Connects and PINGs once; in production also refuses a Redis that keeps nothing on disk (unless
 * REDIS_ALLOW_NO_PERSISTENCE=true): after its restart the counters come back from Postgres only
 * up to the last flush, and idempotency keys of the last flush interval are forgotten. Returns the
 * problem to print, or undefined when Redis is fit.
 */
export async function checkRedis(config: Config): Promise<string | undefined> {
  const nodes = config.redisClusterNodes
  const redisUrl = config.redisUrl ?? nodes?.map((n) => `${n.host}:${n.port}`).join(',')
  if (redisUrl === undefined) return 'quota: REDIS_URL is not set (mode redis needs it)'
  // A throwaway connection: the app opens its own. Failing here gives the operator a clear line.
  const options = { commandTimeoutMs: 2000, connectionName: 'quota-preflight' }
  const probe = nodes !== undefined ? createClusterClient({ nodes, ...options }) : createRedisClient({ url: redisUrl, ...options })
  // ioredis' connect() only says "Connection is closed"; the socket error says why (ECONNREFUSED...).
  let socketError: Error | undefined
  probe.on('error', (err: Error) => {
    socketError ??= err
  })
  try {
    await connectRedis(probe, redisUrl, 3000)
    await probe.ping()
  } catch (err) {
    const cause = socketError ?? (err as Error)
    probe.disconnect()
    return `quota: cannot reach Redis at ${redactUrl(redisUrl)} (${cause.message.replace(/\.+$/, '')}).\n` +
      '  Start it with: docker compose up -d redis\n' +
      '  or, installed locally: redis-server --daemonize yes'
  }
  try {
    if (!config.production || config.redisAllowNoPersistence) return undefined
    if (restartLoses(await readRedisSettings(probe)) !== 'everything') return undefined
    return `quota: Redis at ${redactUrl(redisUrl)} keeps nothing on disk (appendonly no, no save rules).\n` +
      '  A Redis restart would lose the changes of the last flush interval. Turn on AOF:\n' +
      '    redis-cli CONFIG SET appendonly yes  (and appendfsync everysec in redis.conf)\n' +
      '  or accept that loss explicitly with REDIS_ALLOW_NO_PERSISTENCE=true'
  } finally {
    probe.disconnect()
  }
}

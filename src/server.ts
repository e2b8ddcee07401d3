/**
 * The process: config, preflight of Postgres and Redis with operator-readable failures,
 * migrations, listen, and graceful shutdown. SIGTERM/SIGINT -> app.close() (stops accepting,
 * drains in-flight requests, then onClose hooks flush counters and close connections) -> exit 0.
 * `npm start` runs this file directly with `node --import tsx`, in-process (no tsx child).
 */
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import type { Logger } from 'pino'
import { buildApp, loggerOptions } from './app.ts'
import { ConfigError, loadConfig, redactedConfig } from './config.ts'
import type { Config } from './config.ts'
import { createRedisClient, connectRedis, redactUrl } from './counters/redis-client.ts'
import { createPool, ensureDatabase } from './db/client.ts'
import { migrate } from './db/migrate.ts'

/** Errors that mean "the server is not there", as opposed to a refusal from a running server. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ETIMEDOUT', 'ECONNRESET', 'EAI_AGAIN', '57P03'])

function fail(lines: string[]): never {
  for (const line of lines) console.error(line)
  process.exit(1)
}

function readConfig(): Config {
  try {
    return loadConfig()
  } catch (err) {
    if (err instanceof ConfigError) fail([`quota: configuration error: ${err.message}`])
    throw err
  }
}

async function preparePostgres(config: Config, log: Logger): Promise<string | undefined> {
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

async function checkRedis(config: Config): Promise<string | undefined> {
  // A throwaway connection: the app opens its own. Failing here gives the operator a clear line.
  const probe = createRedisClient({ url: config.redisUrl, commandTimeoutMs: 2000, connectionName: 'quota-preflight' })
  try {
    await connectRedis(probe, config.redisUrl, 3000)
    await probe.ping()
    return undefined
  } catch (err) {
    return `quota: ${(err as Error).message}.\n` +
      '  Start it with: docker compose up -d redis\n' +
      '  or, installed locally: redis-server --daemonize yes'
  } finally {
    probe.disconnect()
  }
}

async function main(): Promise<void> {
  const config = readConfig()
  const log = pino(loggerOptions(config))
  log.info({ config: redactedConfig(config) }, 'starting quota')

  const problems = (await Promise.all([preparePostgres(config, log), checkRedis(config)])).filter((p) => p !== undefined)
  if (problems.length > 0) fail(problems)

  const app = await buildApp({ config, logger: log })

  closeWithGrace({ delay: 10_000, logger: { error: (msg: unknown) => app.log.error(msg) } }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'uncaught error; closing')
    else app.log.info({ signal }, 'shutting down: draining requests and flushing counters')
    await app.close()
    app.log.info('closed')
  })

  await app.listen({ port: config.port, host: config.host })
}

main().catch((err: unknown) => {
  console.error(`quota: failed to start: ${(err as Error)?.stack ?? String(err)}`)
  process.exit(1)
})

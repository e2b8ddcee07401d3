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

/** A repeat of the first signal within this time is the same Ctrl-C delivered twice, not a second request. */
const DUPLICATE_SIGNAL_MS = 1500

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
  // ioredis' connect() only says "Connection is closed"; the socket error says why (ECONNREFUSED...).
  let socketError: Error | undefined
  probe.on('error', (err: Error) => {
    socketError ??= err
  })
  try {
    await connectRedis(probe, config.redisUrl, 3000)
    await probe.ping()
    return undefined
  } catch (err) {
    const cause = socketError ?? (err as Error)
    return `quota: cannot reach Redis at ${redactUrl(config.redisUrl)} (${cause.message.replace(/\.+$/, '')}).\n` +
      '  Start it with: docker compose up -d redis\n' +
      '  or, installed locally: redis-server --daemonize yes'
  } finally {
    probe.disconnect()
  }
}

async function main(): Promise<void> {
  const config = readConfig()
  const log = pino(loggerOptions(config))

  // SIGINT/SIGTERM are handled here rather than by close-with-grace: one Ctrl-C reaches node
  // twice under `npm start` (from the terminal's process group and again forwarded by npm), and
  // close-with-grace treats any second signal as "exit 1 now", skipping the final flush. Installed
  // first, so a signal during start-up also ends with 0 (nothing to drain yet) instead of 130/143.
  const running: { shutdown?: (signal: NodeJS.Signals) => void } = {}
  let firstSignalAt = 0
  const onSignal = (signal: NodeJS.Signals): void => {
    if (firstSignalAt !== 0) {
      if (Date.now() - firstSignalAt <= DUPLICATE_SIGNAL_MS) return
      log.error({ signal }, 'second signal while closing: exiting now')
      process.exit(1)
    }
    firstSignalAt = Date.now()
    if (!running.shutdown) {
      log.info({ signal }, 'signal during start-up: nothing to drain, exiting')
      process.exit(0)
    }
    running.shutdown(signal)
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  log.info({ config: redactedConfig(config) }, 'starting quota')
  const problems = (await Promise.all([preparePostgres(config, log), checkRedis(config)])).filter((p) => p !== undefined)
  if (problems.length > 0) fail(problems)

  const app = await buildApp({ config, logger: log })
  // Uncaught errors (and the rarer signals) still go through close-with-grace: close, then exit 1.
  const grace = closeWithGrace(
    { delay: 10_000, skip: ['SIGINT', 'SIGTERM'], logger: { error: (msg: unknown) => app.log.error(msg) } },
    async ({ err }) => {
      if (err) app.log.error({ err }, 'uncaught error; closing')
      await app.close() // stops accepting, drains in-flight requests, then onClose hooks flush and disconnect
      app.log.info('closed')
    },
  )
  running.shutdown = (signal) => {
    app.log.info({ signal }, 'shutting down: draining requests and flushing counters')
    grace.close()
  }

  await app.listen({ port: config.port, host: config.host })
}

main().catch((err: unknown) => {
  console.error(`quota: failed to start: ${(err as Error)?.stack ?? String(err)}`)
  process.exit(1)
})

/**
 * The process: config (which chooses the mode), preflight of Postgres and Redis — or, in
 * embedded mode, of the data folder and its database — with operator-readable failures,
 * migrations, listen, and graceful shutdown. SIGTERM/SIGINT -> app.close() (stops accepting,
 * drains in-flight requests, then onClose hooks flush counters and close connections) -> exit 0.
 * `npm start` runs its build (dist/server.js) with plain node; `npm run dev` runs this file with
 * `node --import tsx`, in-process (no tsx child).
 */
// Only light modules are imported statically: the signal handlers must be in place before the
// heavy graph (fastify, pg, ioredis, drizzle, the app) loads, which under load can take seconds;
// a SIGTERM in that window would otherwise kill the process with 143 instead of exiting 0.
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import { ConfigError, loadConfig, redactedConfig } from './config.ts'
import type { Config } from './config.ts'
import { loggerOptions } from './logger.ts'

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

  // The mode first: the one field an operator reading the first line needs to see.
  log.info({ mode: config.mode, config: redactedConfig(config) }, `starting quota (mode ${config.mode})`)
  const [{ buildApp }, { checkRedis, prepareEmbedded, preparePostgres }] = await Promise.all([import('./app.ts'), import('./preflight.ts')])
  let embedded: Exclude<Awaited<ReturnType<typeof prepareEmbedded>>, string> | undefined
  if (config.mode === 'embedded') {
    const prepared = await prepareEmbedded(config, log)
    if (typeof prepared === 'string') fail([prepared])
    embedded = prepared
  } else {
    const problems = (await Promise.all([preparePostgres(config, log), checkRedis(config)])).filter((p) => p !== undefined)
    if (problems.length > 0) fail(problems)
  }

  const app = await buildApp({ config, logger: log, ...(embedded && { pool: embedded.pool }) })
    .catch(async (err: unknown) => {
      await embedded?.close()
      throw err
    })

  // Uncaught errors (and the rarer signals) still go through close-with-grace: close, then exit 1.
  const grace = closeWithGrace(
    { delay: 10_000, skip: ['SIGINT', 'SIGTERM'], logger: { error: (msg: unknown) => app.log.error(msg) } },
    async ({ err }) => {
      if (err) app.log.error({ err }, 'uncaught error; closing')
      await app.close() // stops accepting, drains in-flight requests, then onClose hooks flush and disconnect
      // The app does not own the embedded database (it was passed in): closed after the final
      // flush has written to it. Closing it also releases the data folder.
      await embedded?.close()
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

/**
 * One bench server process: the variant named by VARIANT, alone in its own Node process, on
 * 127.0.0.1:PORT. The driver (../http.ts) forks one per variant and sends load to one at a time.
 * Sends 'ready' over IPC once listening; closes on SIGTERM, SIGINT, or when the driver goes away
 * (the IPC channel closes), so no server outlives a failed run.
 * Env: VARIANT, PORT, REDIS_URL, DATABASE_URL, PREFIX, OVER (1 = over-limit run), DATA_DIR
 * (embedded), USERS (how many users the embedded variant seeds).
 */
import Fastify from 'fastify'
import type { BuildVariant } from './variant.ts'

/**
 * Each server loads only its own variant's modules: a bare server must not carry PGlite or the
 * peers in its RSS.
 */
const SERVERS = {
  bare: async () => (await import('./bare.ts')).buildBare,
  'plain-lua': async () => (await import('./plain-lua.ts')).buildPlainLua,
  quota: async () => (await import('./quota.ts')).buildQuota,
  'quota-metrics': async () => (await import('./quota.ts')).buildQuotaWithMetrics,
  'quota-embedded': async () => (await import('./quota-embedded.ts')).buildQuotaEmbedded,
  frl: async () => (await import('./peers.ts')).buildFastifyRateLimit,
  rlf: async () => (await import('./peers.ts')).buildRateLimiterFlexible,
} satisfies Record<string, () => Promise<BuildVariant>>

export type ServerName = keyof typeof SERVERS

const env = (name: string): string => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is required`)
  return value
}

const name = env('VARIANT') as ServerName
if (!Object.hasOwn(SERVERS, name)) throw new Error(`unknown VARIANT ${name}`)
const build = await SERVERS[name]()
// No request logging, as in every variant: the bench measures limiters, not log output.
const app = Fastify({ logger: false })
const closeClients = await build(app, {
  redisUrl: env('REDIS_URL'),
  databaseUrl: env('DATABASE_URL'),
  prefix: env('PREFIX'),
  over: process.env.OVER === '1',
  dataDir: process.env.DATA_DIR,
  userCount: Number(process.env.USERS ?? 1000),
})
await app.listen({ port: Number(env('PORT')), host: '127.0.0.1' })
process.send?.('ready')

let stopping: Promise<void> | undefined
const stop = (): Promise<void> => {
  stopping ??= (async () => {
    await app.close()
    await closeClients()
    process.exit(0)
  })()
  return stopping
}
process.on('SIGTERM', () => void stop())
process.on('SIGINT', () => void stop())
process.on('disconnect', () => void stop())

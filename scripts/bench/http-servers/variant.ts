/**
 * What every bench server variant shares: its settings (from the environment the driver sets),
 * the shape of a variant's builder, and the pieces its one route is made of, so variants differ
 * only in their limiter.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'

export interface ServerSettings {
  redisUrl: string
  databaseUrl: string
  /** Prefix of the variant's Redis keys: its own, so no other variant's flusher touches them. */
  prefix: string
  /** Over-limit run: a limit of 1 (peers, Lua baseline); quota's over-limit users are in tier bench_one. */
  over: boolean
  /** Embedded variant: the data folder of its PGlite database (the driver creates and removes it). */
  dataDir: string | undefined
  /** How many bench users the embedded variant seeds into its own database. */
  userCount: number
}

/**
 * Adds the variant's limiter and its one guarded route, `GET /`, to `app`. Returns what to close
 * after app.close() (clients the limiter does not own).
 */
export type BuildVariant = (app: FastifyInstance, settings: ServerSettings) => Promise<() => Promise<void>>

/** The user id comes from the `x-user` header: the benchmark measures limiters, not JWT checks. */
export const userOf = (request: FastifyRequest): string | undefined => {
  const user = request.headers['x-user']
  return typeof user === 'string' ? user : undefined
}

/** The route's own work, the same for every variant. */
export const answer = async (): Promise<{ ok: true }> => ({ ok: true })

/** The peers' and the Lua baseline's limit: far above any run, or 1 for the over-limit runs. */
export const limitOf = (settings: ServerSettings): number => (settings.over ? 1 : 2_000_000_000)

/** A day: the window of every limiter here, so no window ends during a run. */
export const WINDOW_S = 86_400

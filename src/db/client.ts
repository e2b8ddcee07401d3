/**
 * Postgres connections. Every Pool and Client gets an `error` listener: an idle connection that
 * dies (Postgres restarted) must never crash the process.
 */
import pg from 'pg'
import type { Logger } from 'pino'

export type Pool = pg.Pool
/** A standalone connection (LISTEN, advisory locks). */
export type Client = pg.Client
export type PoolClient = pg.PoolClient

// Dates stay 'YYYY-MM-DD' strings and numerics stay exact decimal text: no JS Date or float rounding.
pg.types.setTypeParser(pg.types.builtins.DATE, (v) => v)
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v))

export interface PoolOptions {
  max?: number
  logger?: Pick<Logger, 'warn'>
  /** Fail a query that cannot get a connection within this time. */
  connectionTimeoutMillis?: number
}

export function createPool(databaseUrl: string, options: PoolOptions = {}): Pool {
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: options.max ?? 10,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 5000,
    // A hung server must not hang a flush, a tier lookup or the shutdown forever.
    query_timeout: 10_000,
    idleTimeoutMillis: 30_000,
    // The service's sessions see UTC days whatever the database default is.
    options: '-c timezone=UTC',
    application_name: 'quota',
  })
  pool.on('error', (err) => {
    options.logger?.warn({ err: err.message }, 'postgres idle connection error')
  })
  return pool
}

/** A standalone client (LISTEN, advisory locks) with its error listener attached. */
export function createClient(databaseUrl: string, onError: (err: Error) => void): Client {
  const client = new pg.Client({ connectionString: databaseUrl, options: '-c timezone=UTC', application_name: 'quota' })
  client.on('error', onError)
  return client
}

/** The database name of a postgres URL. */
export function databaseName(databaseUrl: string): string {
  const name = decodeURIComponent(new URL(databaseUrl).pathname.replace(/^\//, ''))
  if (!name) throw new Error(`DATABASE_URL names no database: ${databaseUrl}`)
  return name
}

function adminUrl(databaseUrl: string): string {
  const url = new URL(databaseUrl)
  url.pathname = '/postgres'
  return url.toString()
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`
}

/**
 * Creates the database named in `databaseUrl` when it is missing. Returns true when it created it.
 * A role without CREATEDB gets Postgres' own error, which names the problem.
 */
export async function ensureDatabase(databaseUrl: string): Promise<boolean> {
  const name = databaseName(databaseUrl)
  const probe = new pg.Client({ connectionString: databaseUrl })
  probe.on('error', () => {})
  try {
    await probe.connect()
    return false
  } catch (err) {
    if ((err as { code?: string }).code !== '3D000') throw err // 3D000 = invalid_catalog_name
  } finally {
    await probe.end().catch(() => {})
  }
  const admin = new pg.Client({ connectionString: adminUrl(databaseUrl) })
  admin.on('error', () => {})
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${quoteIdent(name)}`)
    return true
  } catch (err) {
    if ((err as { code?: string }).code === '42P04') return false // created meanwhile by another process
    throw err
  } finally {
    await admin.end().catch(() => {})
  }
}

/** Drops a database (test helpers); terminates its other sessions first. */
export async function dropDatabase(databaseUrl: string): Promise<void> {
  const name = databaseName(databaseUrl)
  const admin = new pg.Client({ connectionString: adminUrl(databaseUrl) })
  admin.on('error', () => {})
  await admin.connect()
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`)
  } finally {
    await admin.end().catch(() => {})
  }
}

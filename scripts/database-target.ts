/**
 * The database the command-line tools (npm run sql, db:migrate, db:status, db:rollback) work on:
 * the one the service would use with the same environment.
 *
 *   DATABASE_URL     that database. Only it matters here: a migration needs no Redis, so the
 *                    tools do not insist on REDIS_URL as the service does.
 *   none of the server variables (embedded mode): the data folder's database, opened in this process — refused while the
 *                    service holds the folder (one process per folder), unless EMBEDDED_PG_PORT
 *                    is set: the running service serves the database there, and the tool
 *                    connects to it over the wire instead.
 */
import { ConfigError, loadConfig } from '../src/config.ts'
import type { Config } from '../src/config.ts'
import { createPool } from '../src/db/client.ts'
import type { Pool } from '../src/db/client.ts'
import { DataFolderLockedError, embeddedDatabaseDir, lockDataFolder } from '../src/db/data-folder.ts'
import { asPool, openEmbeddedDatabase } from '../src/db/pglite-pool.ts'

export interface DatabaseTarget {
  /** What the tool says it works on. */
  description: string
  pool: Pool
  /** A URL when the database is a server (DATABASE_URL, or the service's EMBEDDED_PG_PORT). */
  url?: string
  embedded: boolean
  close(): Promise<void>
}

/** Thrown with the one line to print. */
export class TargetError extends Error {}

function config(): Config {
  try {
    // The tools never need the JWT key; a placeholder keeps loadConfig from creating the dev secret file.
    return loadConfig({ ...process.env, JWT_SECRET: 'x'.repeat(32), JWT_PUBLIC_KEY: undefined })
  } catch (err) {
    if (err instanceof ConfigError) throw new TargetError(`configuration error: ${err.message}`)
    throw err
  }
}

/** The service's own embedded database, served on EMBEDDED_PG_PORT (user postgres, database postgres). */
export function embeddedServerUrl(port: number): string {
  return `postgres://postgres@127.0.0.1:${port}/postgres`
}

export async function openTarget(): Promise<DatabaseTarget> {
  const databaseUrl = process.env.DATABASE_URL?.trim()
  if (databaseUrl) {
    if (!/^postgres(ql)?:\/\//.test(databaseUrl)) throw new TargetError('DATABASE_URL must be a postgres: or postgresql: URL')
    const url = databaseUrl
    const pool = createPool(url, { max: 1 })
    return { description: 'DATABASE_URL', pool, url, embedded: false, close: () => pool.end() }
  }
  const cfg = config()
  const dataDir = cfg.dataDir as string
  let lock
  try {
    lock = lockDataFolder(dataDir)
  } catch (err) {
    if (!(err instanceof DataFolderLockedError)) throw err
    if (cfg.embeddedPgPort === undefined) {
      throw new TargetError(`the service (process ${err.pid}) is running on ${dataDir}; stop it first, ` +
        'or start it with EMBEDDED_PG_PORT set and run this with the same EMBEDDED_PG_PORT')
    }
    const url = embeddedServerUrl(cfg.embeddedPgPort)
    // One connection: the service serves a handful, and the tools need one.
    const pool = createPool(url, { max: 1 })
    return {
      description: `the running service's embedded database (127.0.0.1:${cfg.embeddedPgPort})`,
      pool, url, embedded: true, close: () => pool.end(),
    }
  }
  try {
    const database = await openEmbeddedDatabase(embeddedDatabaseDir(dataDir))
    return {
      description: `the embedded database in ${dataDir}`,
      pool: asPool(database),
      embedded: true,
      close: async () => {
        await database.end()
        lock.release()
      },
    }
  } catch (err) {
    lock.release()
    throw err
  }
}

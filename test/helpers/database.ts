/**
 * One throwaway Postgres database per caller, so test files run in parallel (tap `jobs`) without
 * seeing each other's rows, and the operator's `quota` database is never touched.
 *
 *   const db = await createTestDatabase(t)   // migrated; dropped when `t` ends
 *   const db = await emptyDatabase(t)        // not migrated: for migration tests
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
// Importing client.ts also installs its type parsers (DATE as 'YYYY-MM-DD', INT8 as number), so
// rows read in tests look exactly like the rows the service reads.
import { dropDatabase } from '../../src/db/client.ts'
import { migrate } from '../../src/db/migrate.ts'

/** Anything with tap's `teardown` (the root `t` or a subtest). */
export interface Teardownable {
  teardown(fn: () => unknown): void
}

/** A daily_usage row as the tests select it: dates as text, numerics as exact decimal text. */
export interface DailyUsageRow {
  user_id: string
  date: string
  deployments_created: number
  api_calls: number
  compute_hours: string
  storage_gb: string
  version: number
}

export interface TestDatabase {
  /** postgres:// URL of the new database (give it to the service as DATABASE_URL). */
  url: string
  /** Its name, `quota_test_<pid>_<random>`. */
  name: string
  /**
   * A pool on it. Deliberately a plain pg.Pool (no `-c timezone=UTC` like src/db/client.ts adds):
   * its sessions behave like an operator's psql, so they see the database's own defaults.
   */
  pool: pg.Pool
  /** Ends the pool and drops the database; safe to call twice. */
  drop(): Promise<void>
}

export const BASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`
}

/** The URL of database `name` on the server of BASE_URL (same credentials and host). */
export function databaseUrl(name: string, base: string = BASE_URL): string {
  const url = new URL(base)
  url.pathname = `/${encodeURIComponent(name)}`
  return url.toString()
}

async function create(t: Teardownable | undefined, migrated: boolean): Promise<TestDatabase> {
  // pid + random: unique across parallel tap jobs and across re-runs that left a database behind.
  const name = `quota_test_${process.pid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: BASE_URL })
  admin.on('error', () => {})
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${quoteIdent(name)}`)
  } finally {
    await admin.end().catch(() => {})
  }
  const url = databaseUrl(name)
  let dropped = false
  const pool = new pg.Pool({ connectionString: url, max: 5 })
  // An idle connection killed by DROP DATABASE ... WITH (FORCE) must not crash the test process.
  pool.on('error', () => {})
  const drop = async (): Promise<void> => {
    if (dropped) return
    dropped = true
    await pool.end().catch(() => {})
    await dropDatabase(url)
  }
  // Register teardown before migrating: a failing migration still leaves nothing behind.
  t?.teardown(drop)
  if (migrated) {
    try {
      await migrate(url)
    } catch (err) {
      if (!t) await drop().catch(() => {})
      throw err
    }
  }
  return { url, name, pool, drop }
}

/** A new database with every migration applied. With `t`, dropped when `t` ends. */
export function createTestDatabase(t?: Teardownable): Promise<TestDatabase> {
  return create(t, true)
}

/** A new database with no migration applied (for migration tests). With `t`, dropped when `t` ends. */
export function emptyDatabase(t?: Teardownable): Promise<TestDatabase> {
  return create(t, false)
}

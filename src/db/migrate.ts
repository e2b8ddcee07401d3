/**
 * Migrations: drizzle-kit generates `drizzle/NNNN_name.sql` from src/db/schema.ts; each has a
 * reviewed down script in `drizzle/down/`. Applied migrations are recorded in drizzle's own table
 * (`drizzle.__drizzle_migrations`, same hash and timestamp columns), so drizzle-kit agrees with us.
 * Every migration runs in its own transaction, under an advisory lock so replicas starting
 * together do not race. The target is a connection string, or a pool: embedded mode passes its
 * PGlite pool, whose connect() holds the one session for the whole run.
 */
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { join } from 'node:path'
import { readMigrationFiles } from 'drizzle-orm/migrator'
import pg from 'pg'
import type { Pool } from './client.ts'

export const MIGRATIONS_FOLDER = fileURLToPath(new URL('../../drizzle', import.meta.url))
const LOCK_ID = 0x71756f74 // "quot"

interface JournalEntry {
  idx: number
  when: number
  tag: string
}

export interface MigrationInfo {
  tag: string
  createdAt: number
  hash: string
  applied: boolean
  /** Set when the applied file's hash differs from the file on disk now. */
  modified: boolean
}

function journal(folder: string): JournalEntry[] {
  const raw = JSON.parse(readFileSync(join(folder, 'meta', '_journal.json'), 'utf8')) as { entries: JournalEntry[] }
  return raw.entries
}

function splitStatements(text: string): string[] {
  return text.split('--> statement-breakpoint').map((s) => s.trim()).filter((s) => s.length > 0)
}

/** A connection string, or a pool to take one client from for the whole run. */
export type MigrationTarget = string | Pool
type Session = Pick<pg.ClientBase, 'query'>

async function openSession(target: MigrationTarget): Promise<{ client: Session; close(): Promise<void> }> {
  if (typeof target !== 'string') {
    const client = await target.connect()
    return { client, close: async () => client.release() }
  }
  const client = new pg.Client({ connectionString: target, options: '-c timezone=UTC' })
  client.on('error', () => {})
  await client.connect()
  return { client, close: () => client.end().catch(() => {}) }
}

async function withLockedClient<T>(target: MigrationTarget, fn: (client: Session) => Promise<T>): Promise<T> {
  const { client, close } = await openSession(target)
  try {
    await client.query('SELECT pg_advisory_lock($1)', [LOCK_ID])
    await client.query('CREATE SCHEMA IF NOT EXISTS drizzle')
    await client.query(`CREATE TABLE IF NOT EXISTS drizzle.__drizzle_migrations (
      id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint)`)
    return await fn(client)
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [LOCK_ID]).catch(() => {})
    await close()
  }
}

async function appliedRows(client: Session): Promise<Map<number, string>> {
  const { rows } = await client.query<{ hash: string; created_at: string }>(
    'SELECT hash, created_at FROM drizzle.__drizzle_migrations ORDER BY created_at',
  )
  return new Map(rows.map((r) => [Number(r.created_at), r.hash]))
}

function describe(folder: string, applied: Map<number, string>): MigrationInfo[] {
  const files = readMigrationFiles({ migrationsFolder: folder })
  return journal(folder).map((entry, i) => {
    const file = files[i]
    if (!file) throw new Error(`migration ${entry.tag} listed in the journal has no file`)
    const appliedHash = applied.get(entry.when)
    return {
      tag: entry.tag,
      createdAt: entry.when,
      hash: file.hash,
      applied: appliedHash !== undefined,
      modified: appliedHash !== undefined && appliedHash !== file.hash,
    }
  })
}

/** Applies every pending migration in order. Returns the tags applied. */
export async function migrate(target: MigrationTarget, folder: string = MIGRATIONS_FOLDER): Promise<string[]> {
  return withLockedClient(target, async (client) => {
    const applied = await appliedRows(client)
    const files = readMigrationFiles({ migrationsFolder: folder })
    const done: string[] = []
    for (const [i, entry] of journal(folder).entries()) {
      if (applied.has(entry.when)) continue
      const file = files[i]
      if (!file) throw new Error(`migration ${entry.tag} has no file`)
      await client.query('BEGIN')
      try {
        for (const statement of file.sql) {
          if (statement.trim()) await client.query(statement)
        }
        await client.query('INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ($1, $2)', [
          file.hash,
          entry.when,
        ])
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {})
        throw new Error(`migration ${entry.tag} failed: ${(err as Error).message}`, { cause: err })
      }
      done.push(entry.tag)
    }
    return done
  })
}

/** Applied and pending migrations, in order. */
export async function status(target: MigrationTarget, folder: string = MIGRATIONS_FOLDER): Promise<MigrationInfo[]> {
  return withLockedClient(target, async (client) => describe(folder, await appliedRows(client)))
}

/** Reverts the latest applied migration with its down script. Returns its tag, or null if none. */
export async function rollback(target: MigrationTarget, folder: string = MIGRATIONS_FOLDER): Promise<string | null> {
  return withLockedClient(target, async (client) => {
    const infos = describe(folder, await appliedRows(client))
    const latest = infos.filter((m) => m.applied).at(-1)
    if (!latest) return null
    const down = readFileSync(join(folder, 'down', `${latest.tag}.sql`), 'utf8')
    await client.query('BEGIN')
    try {
      for (const statement of splitStatements(down)) await client.query(statement)
      await client.query('DELETE FROM drizzle.__drizzle_migrations WHERE created_at = $1', [latest.createdAt])
      await client.query('COMMIT')
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {})
      throw new Error(`rollback of ${latest.tag} failed: ${(err as Error).message}`, { cause: err })
    }
    return latest.tag
  })
}

/**
 * drizzle's typed query builder over a pool, made once per pool. The admin, user and limit
 * queries use it (they read clearer typed); the flusher's batch upserts and the seed read stay
 * raw SQL (unnest arrays and a LATERAL join in one statement: measurably faster, see
 * docs/architecture.md).
 */
import { drizzle } from 'drizzle-orm/node-postgres'
import type { NodePgDatabase } from 'drizzle-orm/node-postgres'
import type { Pool } from './client.ts'
import * as schema from './schema.ts'

export type Database = NodePgDatabase<typeof schema>

const databases = new WeakMap<Pool, Database>()

export function queryBuilder(pool: Pool): Database {
  let database = databases.get(pool)
  if (!database) {
    database = drizzle(pool, { schema })
    databases.set(pool, database)
  }
  return database
}

/**
 * quota in embedded mode, as the service runs it: counters in the process, history in PGlite in
 * a data folder — also in the process, so its cost is in the server's CPU and RSS. The flusher
 * and the midnight scheduler run (no leader election: the one process is the leader).
 */
import { embeddedDatabaseDir } from '../../../src/db/data-folder.ts'
import { migrate } from '../../../src/db/migrate.ts'
import { asPool, openEmbeddedDatabase } from '../../../src/db/pglite-pool.ts'
import quota from '../../../src/http/plugin.ts'
import { benchUsers, seedBenchUsers } from '../bench-users.ts'
import { freshPgliteFolder } from './pglite-template.ts'
import { answer, userOf } from './variant.ts'
import type { BuildVariant } from './variant.ts'

/**
 * Embedded mode opens its database the way the service does (preflight.ts, prepareEmbedded):
 * PGlite in the data folder (a fresh one, pglite-template.ts), migrated, then seeded with the
 * bench's tiers and users.
 */
export const buildQuotaEmbedded: BuildVariant = async (app, settings) => {
  if (settings.dataDir === undefined) throw new Error('the embedded variant needs DATA_DIR')
  const folder = embeddedDatabaseDir(settings.dataDir)
  await freshPgliteFolder(folder)
  const database = await openEmbeddedDatabase(folder)
  const pool = asPool(database)
  await migrate(pool)
  await database.refreshTypes()
  const { users, overUsers } = benchUsers(settings.userCount)
  await seedBenchUsers(pool, users, overUsers)
  await app.register(quota, { mode: 'embedded', database: pool, userId: userOf })
  app.get('/', { preHandler: app.requireUsageLimit('api_calls', 1) }, answer)
  return () => database.end()
}

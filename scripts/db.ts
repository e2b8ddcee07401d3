/**
 * npm run db:migrate | db:status | db:rollback — the spec's `alembic upgrade head`,
 * `alembic current` and `alembic downgrade -1` — on the database the service would use with the
 * same environment: DATABASE_URL, or embedded mode's data folder (scripts/database-target.ts).
 */
import { ensureDatabase } from '../src/db/client.ts'
import { migrate, rollback, status } from '../src/db/migrate.ts'
import type { MigrationTarget } from '../src/db/migrate.ts'
import { openTarget } from './database-target.ts'

const command = process.argv[2]

async function main(): Promise<void> {
  if (command !== 'migrate' && command !== 'status' && command !== 'rollback') {
    console.error('usage: db.ts migrate|status|rollback')
    process.exitCode = 2
    return
  }
  const target = await openTarget()
  try {
    await run(target.url ?? target.pool, target.url !== undefined && !target.embedded)
  } finally {
    await target.close()
  }
}

async function run(database: MigrationTarget, server: boolean): Promise<void> {
  switch (command) {
    case 'migrate': {
      if (server && typeof database === 'string' && (await ensureDatabase(database))) console.log('created database')
      const applied = await migrate(database)
      console.log(applied.length ? applied.map((t) => `applied ${t}`).join('\n') : 'no pending migrations')
      return
    }
    case 'status': {
      const infos = await status(database)
      for (const m of infos) {
        console.log(`${m.applied ? 'applied' : 'pending'}  ${m.tag}${m.modified ? '  (file changed since applied!)' : ''}`)
      }
      const current = infos.filter((m) => m.applied).at(-1)
      console.log(`current: ${current ? current.tag : '(none)'}; ${infos.filter((m) => !m.applied).length} pending`)
      return
    }
    case 'rollback': {
      const tag = await rollback(database)
      console.log(tag ? `rolled back ${tag}` : 'nothing to roll back')
      return
    }
  }
}

main().catch((err: Error) => {
  console.error(`db ${command ?? ''}: ${err.message}`)
  process.exitCode = 1
})

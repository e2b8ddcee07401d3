/**
 * npm run db:migrate | db:status | db:rollback — the spec's `alembic upgrade head`,
 * `alembic current` and `alembic downgrade -1`.
 */
import { ensureDatabase } from '../src/db/client.ts'
import { migrate, rollback, status } from '../src/db/migrate.ts'

const databaseUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/quota'
const command = process.argv[2]

async function main(): Promise<void> {
  switch (command) {
    case 'migrate': {
      if (await ensureDatabase(databaseUrl)) console.log('created database')
      const applied = await migrate(databaseUrl)
      console.log(applied.length ? applied.map((t) => `applied ${t}`).join('\n') : 'no pending migrations')
      return
    }
    case 'status': {
      const infos = await status(databaseUrl)
      for (const m of infos) {
        console.log(`${m.applied ? 'applied' : 'pending'}  ${m.tag}${m.modified ? '  (file changed since applied!)' : ''}`)
      }
      const current = infos.filter((m) => m.applied).at(-1)
      console.log(`current: ${current ? current.tag : '(none)'}; ${infos.filter((m) => !m.applied).length} pending`)
      return
    }
    case 'rollback': {
      const tag = await rollback(databaseUrl)
      console.log(tag ? `rolled back ${tag}` : 'nothing to roll back')
      return
    }
    default:
      console.error('usage: db.ts migrate|status|rollback')
      process.exitCode = 2
  }
}

main().catch((err: Error) => {
  console.error(`db ${command ?? ''}: ${err.message}`)
  process.exitCode = 1
})

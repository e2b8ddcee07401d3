/**
 * `npm run sql -- "<query>"`: runs one SQL statement against the configured database (embedded
 * folder or DATABASE_URL: scripts/database-target.ts) and prints the rows as a table, so the
 * spec's monitoring queries work in every mode, with or without psql.
 */
import { openTarget } from './database-target.ts'

const USAGE = 'usage: npm run sql -- "<query>"'

/** A value as psql shows it: NULL as empty, dates as ISO text, objects as JSON. */
function show(value: unknown): string {
  if (value === null || value === undefined) return ''
  if (value instanceof Date) return value.toISOString()
  if (typeof value === 'object') return JSON.stringify(value)
  return String(value)
}

/** psql's aligned format: header, rule, rows, then "(n rows)". */
export function formatTable(columns: string[], rows: unknown[][]): string {
  const cells = rows.map((row) => row.map(show))
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => (r[i] ?? '').length)))
  const line = (values: string[]): string => values.map((v, i) => ` ${v.padEnd(widths[i] ?? 0)} `).join('|').trimEnd()
  const out = [line(columns), widths.map((w) => '-'.repeat(w + 2)).join('+')]
  for (const row of cells) out.push(line(row))
  out.push(`(${rows.length} row${rows.length === 1 ? '' : 's'})`)
  return out.join('\n')
}

async function main(): Promise<void> {
  const text = process.argv.slice(2).join(' ').trim()
  if (text === '' || text === '--help' || text === '-h') {
    console.error(USAGE)
    process.exitCode = 2
    return
  }
  const target = await openTarget()
  try {
    const result = await target.pool.query({ text, rowMode: 'array' })
    // A multi-statement text answers with several results (pg): the last one is shown.
    const last = Array.isArray(result) ? result.at(-1) : result
    const fields = (last?.fields ?? []) as { name: string }[]
    if (fields.length > 0) {
      console.log(formatTable(fields.map((f) => f.name), (last?.rows ?? []) as unknown[][]))
    } else {
      console.log(`${last?.command ?? 'OK'}${last?.rowCount != null ? ` ${last.rowCount}` : ''}`)
    }
  } finally {
    await target.close()
  }
}

main().catch((err: Error) => {
  console.error(`sql: ${err.message}`)
  process.exitCode = 1
})

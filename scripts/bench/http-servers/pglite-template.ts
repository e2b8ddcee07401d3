/**
 * A fresh PGlite data folder, fast. Creating one runs initdb in WebAssembly: about ten seconds of
 * CPU, which would dominate the bench's smoke run. The folder initdb leaves is made once per PGlite
 * version under node_modules/.cache/ and copied for each run; the server then opens, migrates and
 * seeds the copy exactly as it would a folder it had created itself. Only start-up is shortened:
 * nothing measured depends on how the folder came to be.
 */
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { PGlite } from '@electric-sql/pglite'

const PGLITE_PACKAGE = new URL('../../../node_modules/@electric-sql/pglite/package.json', import.meta.url)
const CACHE = new URL('../../../node_modules/.cache/quota-bench/', import.meta.url)

/** Fills `target` (absent) with a just-initialised PGlite data folder. */
export async function freshPgliteFolder(target: string): Promise<void> {
  const { version } = JSON.parse(readFileSync(PGLITE_PACKAGE, 'utf8')) as { version: string }
  const template = fileURLToPath(new URL(`pglite-${version}`, CACHE))
  if (!existsSync(template)) {
    // Built beside the template and renamed into place, so a concurrent run never copies half of one.
    const building = `${template}.${process.pid}`
    mkdirSync(building, { recursive: true })
    await (await PGlite.create(building)).close()
    try {
      renameSync(building, template)
    } catch {
      rmSync(building, { recursive: true, force: true }) // another run made it first
    }
  }
  cpSync(template, target, { recursive: true })
}

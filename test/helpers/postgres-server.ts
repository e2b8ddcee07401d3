/**
 * A throwaway Postgres cluster per fault test. The shared server on 5432 must never be stopped,
 * so tests of Postgres outages ("nothing lost while Postgres is down, retried after") run their
 * own cluster on a free port and stop/start it at will.
 *
 * Postgres refuses to run as root; when we are root every server binary is run through
 * `runuser -u postgres`, in a temp dir owned by postgres.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process'
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Teardownable } from './database.ts'
import { freePort } from './net.ts'

const run = promisify(execFile)

export interface PostgresServer {
  readonly port: number
  /** The cluster's directory (data in `<dir>/data`, socket and log in `<dir>`). */
  readonly dir: string
  /** URL of database `dbName` (default `postgres`) on this server, as user postgres (trust). */
  url(dbName?: string): string
  /** Stops the server (`pg_ctl stop -m fast` by default; `immediate` is a crash). No-op if stopped. */
  stop(mode?: 'smart' | 'fast' | 'immediate'): Promise<void>
  /** Starts it again on the same port and data. No-op if running. */
  start(): Promise<void>
  /** Stops it and deletes the cluster. */
  destroy(): Promise<void>
  /** The server log, for diagnostics. */
  log(): string
}

/** Postgres' bin dir: `pg_config --bindir` if it has initdb, else the newest /usr/lib/postgresql/N/bin. */
export function postgresBinDir(): string {
  try {
    const dir = execFileSync('pg_config', ['--bindir'], { encoding: 'utf8' }).trim()
    if (existsSync(join(dir, 'initdb'))) return dir
  } catch {
    // no pg_config on PATH: fall through to the Debian layout
  }
  const root = '/usr/lib/postgresql'
  const versions = existsSync(root)
    ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a))
    : []
  const newest = versions[0]
  if (newest === undefined) throw new Error('no Postgres server binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin)')
  return join(root, newest, 'bin')
}

const asRoot = process.getuid?.() === 0

/** argv for a Postgres binary: through runuser when we are root. */
function command(bin: string, args: string[]): [string, string[]] {
  return asRoot ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args]
}

async function exec(bin: string, args: string[], what: string, logFile?: string): Promise<void> {
  const [file, argv] = command(bin, args)
  try {
    await run(file, argv, { encoding: 'utf8' })
  } catch (err) {
    const e = err as Error & { stdout?: string; stderr?: string }
    const log = logFile && existsSync(logFile) ? `\n--- server log ---\n${readFileSync(logFile, 'utf8')}` : ''
    throw new Error(`${what} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}${log}`, { cause: err })
  }
}

export async function startPostgresServer(t?: Teardownable): Promise<PostgresServer> {
  const bin = postgresBinDir()
  const port = await freePort()
  // Short path under tmpdir: the unix socket path (<dir>/.s.PGSQL.<port>) must stay < 108 bytes.
  const dir = mkdtempSync(join(tmpdir(), 'quota-pg-'))
  const data = join(dir, 'data')
  const logFile = join(dir, 'log')
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim())
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim())
    chownSync(dir, uid, gid)
  }
  let running = false
  let destroyed = false

  // --no-sync and fsync=off: durability of a throwaway cluster does not matter, speed does.
  await exec(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C'], 'initdb')

  const start = async (): Promise<void> => {
    if (running) return
    await exec(
      join(bin, 'pg_ctl'),
      ['-D', data, '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, '-l', logFile, '-w', '-t', '30', 'start'],
      `pg_ctl start (port ${port})`,
      logFile,
    )
    running = true
  }

  const stop = async (mode: 'smart' | 'fast' | 'immediate' = 'fast'): Promise<void> => {
    if (!running) return
    await exec(join(bin, 'pg_ctl'), ['-D', data, '-m', mode, '-w', '-t', '30', 'stop'], 'pg_ctl stop', logFile)
    running = false
  }

  // If the test process dies without teardown, do not leave a postmaster behind.
  const onExit = (): void => {
    if (!running) return
    const [file, argv] = command(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', 'stop'])
    spawnSync(file, argv, { stdio: 'ignore' })
  }
  process.on('exit', onExit)

  const destroy = async (): Promise<void> => {
    if (destroyed) return
    destroyed = true
    process.off('exit', onExit)
    try {
      await stop('immediate')
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }

  t?.teardown(destroy)
  try {
    await start()
  } catch (err) {
    if (!t) await destroy().catch(() => {})
    throw err
  }

  return {
    port,
    dir,
    url: (dbName = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(dbName)}`,
    stop,
    start,
    destroy,
    log: () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''),
  }
}

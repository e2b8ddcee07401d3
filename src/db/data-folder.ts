/**
 * Embedded mode's data folder: one process at a time. The counters of embedded mode live in the
 * process, so a second process on the same folder would count from its own copy and both would
 * admit a user's full allowance; PGlite, one Postgres backend, must not be opened twice either.
 *
 * The lock is `quota.pid` in the folder, created exclusively (O_EXCL) and holding the owner's pid.
 * A file left by a process that no longer runs (SIGKILL, power loss) is taken over. The embedded
 * database lives in the `pg` folder beside it.
 */
import { mkdirSync, openSync, readFileSync, unlinkSync, writeSync, closeSync } from 'node:fs'
import { join } from 'node:path'

export const LOCK_FILE = 'quota.pid'
/** The PGlite database inside the data folder. */
export const DATABASE_FOLDER = 'pg'

export function embeddedDatabaseDir(dataDir: string): string {
  return join(dataDir, DATABASE_FOLDER)
}

export class DataFolderLockedError extends Error {
  override name = 'DataFolderLockedError'
  constructor(readonly dataDir: string, readonly pid: number) {
    super(`the data folder ${dataDir} is in use by process ${pid} (embedded mode runs one process per folder; ` +
      `stop that one, or give this one another QUOTA_DATA_DIR)`)
  }
}

export interface DataFolderLock {
  readonly file: string
  /** Removes the lock file if it is still this process's. Idempotent. */
  release(): void
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: it exists but belongs to another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function holder(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim())
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/**
 * Takes the data folder for this process (creating the folder when missing), or throws
 * DataFolderLockedError naming the pid that holds it.
 */
export function lockDataFolder(dataDir: string): DataFolderLock {
  mkdirSync(dataDir, { recursive: true })
  const file = join(dataDir, LOCK_FILE)
  for (let attempt = 0; attempt < 5; attempt++) {
    let fd: number
    try {
      fd = openSync(file, 'wx', 0o644)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const pid = holder(file)
      if (pid !== undefined && pid !== process.pid && alive(pid)) throw new DataFolderLockedError(dataDir, pid)
      // Stale (its process is gone), or empty because its writer is between open and write: an
      // empty file gets a moment before it counts as stale.
      if (pid === undefined && attempt < 2) {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50)
        continue
      }
      try {
        unlinkSync(file)
      } catch (unlinkErr) {
        if ((unlinkErr as NodeJS.ErrnoException).code !== 'ENOENT') throw unlinkErr
      }
      continue
    }
    try {
      writeSync(fd, `${process.pid}\n`)
    } finally {
      closeSync(fd)
    }
    let released = false
    const release = (): void => {
      if (released) return
      released = true
      process.off('exit', release)
      if (holder(file) !== process.pid) return
      try {
        unlinkSync(file)
      } catch {
        // Gone already: nothing to release.
      }
    }
    // Also on an exit that skips the shutdown path (process.exit after a fatal error).
    process.on('exit', release)
    return { file, release }
  }
  const pid = holder(file)
  throw pid !== undefined ? new DataFolderLockedError(dataDir, pid) : new Error(`cannot take the lock file ${file}`)
}

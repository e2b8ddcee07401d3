/**
 * The real service as a child process, started as users start it — `node --import tsx
 * src/server.ts` (what `npm run dev` runs: no build step, so tests start fast) or `npm start`
 * itself (which builds dist/ when stale and runs it with plain node) — for the tests that only a real
 * process can answer: signals (SIGTERM drains, flushes, exits 0), SIGKILL + restart (nothing
 * lost), start-up from environment, migrations on start.
 *
 *   const svc = await startService(t, { DATABASE_URL: db.url, REDIS_URL, REDIS_KEY_PREFIX: redis.prefix })
 *   await fetch(`${svc.baseUrl}/api/usage/status`, { headers: { authorization: `Bearer ${token}` } })
 *   svc.signal('SIGTERM'); t.same(await svc.waitForExit(10_000), { code: 0, signal: null })
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Teardownable } from './database.ts'
import { cleanEnv, freePort, waitUntil, withoutTapHooks } from './net.ts'

/** The repository root (this file is test/helpers/service-process.ts). */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url))

export interface ServiceOptions {
  /** Spawn `npm start` instead of node directly (signals then go to npm, as in a terminal). */
  viaNpm?: boolean
  /** Bound on the wait for GET /ready = 200. @default 30000 */
  readyTimeoutMs?: number
  /** Do not wait for /ready (for tests of a service that must refuse to start). */
  noWait?: boolean
  /** Script node runs instead of src/server.ts (tests of this helper). Ignored with viaNpm. */
  entry?: string
  /**
   * Working directory of the process. @default the repository root. Elsewhere (embedded mode's
   * default ./data folder), node runs the repository's src/server.ts with tsx resolved from here.
   */
  cwd?: string
}

export interface ExitStatus {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface ServiceProcess {
  readonly port: number
  /** http://127.0.0.1:<port> */
  readonly baseUrl: string
  readonly pid: number
  readonly child: ChildProcess
  /** The environment the service got (includes the generated JWT_SECRET, to sign tokens). */
  readonly env: Readonly<Record<string, string>>
  /** Sends a signal to the spawned process (npm itself when viaNpm: as a user's Ctrl-C would). */
  signal(sig: NodeJS.Signals): void
  /** Resolves with the exit status; rejects (with the output) if still running after `timeoutMs`. */
  waitForExit(timeoutMs: number): Promise<ExitStatus>
  /** stdout and stderr so far, interleaved as received. */
  output(): string
  /** Whether the process has exited. */
  exited(): boolean
}

/**
 * Starts the service with `env` on top of a cleaned process.env, PORT = a free port,
 * HOST = 127.0.0.1, LOG_LEVEL = warn and JWT_SECRET = a random 32-byte secret unless given
 * (never the dev-secret file in the repo). Waits until GET /ready answers 200.
 */
export async function startService(
  t: Teardownable,
  env: Record<string, string | undefined> = {},
  options: ServiceOptions = {},
): Promise<ServiceProcess> {
  const port = await freePort()
  const serviceEnv: Record<string, string> = {
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    JWT_SECRET: randomBytes(32).toString('base64url'),
    ...Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined)),
    PORT: String(port),
  }
  const elsewhere = options.cwd !== undefined
  const [file, args] = options.viaNpm === true
    ? ['npm', ['start', '--silent']]
    : [process.execPath, [
        '--import', elsewhere ? import.meta.resolve('tsx') : 'tsx',
        elsewhere ? join(REPO_ROOT, options.entry ?? 'src/server.ts') : options.entry ?? 'src/server.ts',
      ]]
  const [command, argv] = withoutTapHooks(file, args, serviceEnv.NODE_OPTIONS)
  // detached: own process group, so teardown can SIGKILL npm *and* the node it started.
  const child = spawn(command, argv, {
    cwd: options.cwd ?? REPO_ROOT,
    env: cleanEnv(serviceEnv),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  let log = ''
  child.stdout?.on('data', (b: Buffer) => (log += b.toString()))
  child.stderr?.on('data', (b: Buffer) => (log += b.toString()))
  let status: ExitStatus | undefined
  const exit = new Promise<ExitStatus>((resolve) => {
    child.once('exit', (code, signal) => {
      status = { code, signal }
      resolve(status)
    })
  })
  let spawnError: Error | undefined
  child.once('error', (err) => (spawnError = err))

  // The whole group, even after the spawned process exited: a SIGKILLed npm leaves its node behind.
  const killGroup = (): void => {
    if (child.pid === undefined) return
    try {
      process.kill(-child.pid, 'SIGKILL')
    } catch {
      // group already gone
    }
  }
  // If the test process dies without teardown, do not leave a server holding the port.
  process.on('exit', killGroup)
  t.teardown(async () => {
    process.off('exit', killGroup)
    killGroup()
    if (child.pid !== undefined) await exit
  })

  const baseUrl = `http://127.0.0.1:${port}`
  if (options.noWait !== true) {
    const timeoutMs = options.readyTimeoutMs ?? 30_000
    try {
      await waitUntil(
        async () => {
          const res = await fetch(`${baseUrl}/ready`, { signal: AbortSignal.timeout(2000) })
          await res.arrayBuffer()
          return res.status === 200
        },
        {
          what: `service (${file} ${args.join(' ')}) on port ${port}`,
          timeoutMs,
          intervalMs: 100,
          abort: () => {
            if (spawnError) return `could not spawn: ${spawnError.message}`
            if (status) return `exited (code ${status.code}, signal ${status.signal}) before /ready answered 200`
            return undefined
          },
        },
      )
    } catch (err) {
      killGroup()
      throw new Error(`${(err as Error).message}\n--- service output ---\n${log}`, { cause: err })
    }
  }

  return {
    port,
    baseUrl,
    pid: child.pid ?? -1,
    child,
    env: serviceEnv,
    signal(sig) {
      if (status === undefined && child.pid !== undefined) process.kill(child.pid, sig)
    },
    async waitForExit(timeoutMs) {
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`service still running after ${timeoutMs} ms\n--- service output ---\n${log}`)),
          timeoutMs,
        )
      })
      try {
        return await Promise.race([exit, timeout])
      } finally {
        clearTimeout(timer)
      }
    },
    output: () => log,
    exited: () => status !== undefined,
  }
}

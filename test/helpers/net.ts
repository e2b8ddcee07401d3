/**
 * Small networking and polling utilities shared by the test helpers that start processes.
 */
import { createServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/**
 * A TCP port that was free a moment ago on 127.0.0.1. The kernel picks it (port 0), so parallel
 * test files do not collide the way a fixed or random port would; the small window between close
 * and the caller's bind is accepted (the callers retry by failing loudly, not silently).
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, host, () => {
      const address = server.address()
      if (address === null || typeof address === 'string') {
        server.close()
        reject(new Error('could not read the port of a listening socket'))
        return
      }
      const { port } = address
      server.close((err) => (err ? reject(err) : resolve(port)))
    })
  })
}

export interface WaitOptions {
  /** Give up after this long. */
  timeoutMs: number
  /** Pause between attempts. */
  intervalMs?: number
  /** Checked before each attempt; a returned string aborts the wait with that reason (e.g. "process exited"). */
  abort?: () => string | undefined
  /** Named in the timeout error. */
  what: string
}

/**
 * Calls `probe` until it returns true, within a bounded time. The last probe error goes into the
 * timeout message, because "timed out" alone says nothing about why.
 */
export async function waitUntil(probe: () => Promise<boolean>, options: WaitOptions): Promise<void> {
  const deadline = Date.now() + options.timeoutMs
  let lastError: unknown
  for (;;) {
    const aborted = options.abort?.()
    if (aborted !== undefined) throw new Error(`${options.what}: ${aborted}`)
    try {
      if (await probe()) return
      lastError = undefined
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : ''
      throw new Error(`${options.what}: not ready after ${options.timeoutMs} ms${why}`)
    }
    await sleep(options.intervalMs ?? 50)
  }
}

/**
 * process.env without the variables tap sets for its own test processes. tap puts an `--import`
 * of its process-info hook into NODE_OPTIONS; a child that inherits it is no longer started
 * "exactly as users do", and a long-lived server should not report into tap's bookkeeping.
 */
export function cleanEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (key === 'NODE_OPTIONS' || key.startsWith('TAP') || key.startsWith('_TAPJS_') || key === 'TS_NODE_TRANSPILE_ONLY') {
      continue
    }
    env[key] = value
  }
  for (const [key, value] of Object.entries(extra)) {
    if (value === undefined) delete env[key]
    else env[key] = value
  }
  return env
}

/**
 * argv that runs `file args` with tap's hooks removed. tap's process-info plugin patches
 * child_process so every child gets its `--import` in NODE_OPTIONS (plus `_TAPJS_PROCESSINFO_*`
 * variables) whatever env we pass; going through `env -u ...` drops them after that patch ran.
 * `env` execs the command, so the child's pid is the command's own pid and signals reach it.
 * A NODE_OPTIONS the caller really wants is passed in `keepNodeOptions`.
 */
export function withoutTapHooks(file: string, args: string[], keepNodeOptions?: string): [string, string[]] {
  const unset = ['NODE_OPTIONS', ...Object.keys(process.env).filter((k) => k.startsWith('_TAPJS_'))]
  const set = keepNodeOptions === undefined ? [] : [`NODE_OPTIONS=${keepNodeOptions}`]
  return ['env', [...unset.flatMap((k) => ['-u', k]), ...set, file, ...args]]
}

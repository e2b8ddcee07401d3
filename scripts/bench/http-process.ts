/**
 * Starting and stopping the HTTP bench's server processes (http-servers/serve.ts), one Node
 * process per variant, each run as a user would run it: `node --import tsx`, its own port.
 * Every process started here is killed when the bench process exits, whatever the reason; a
 * server also stops by itself when its IPC channel to the bench closes.
 */
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { freePort } from '../../test/helpers/net.ts'
import type { ServerName } from './http-servers/serve.ts'

export interface BenchServer {
  pid: number
  url: string
  /** SIGTERM (the server closes its app and clients), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>
}

const SERVE = fileURLToPath(new URL('./http-servers/serve.ts', import.meta.url))
/** Longest a server may take to start: embedded mode creates and migrates its PGlite database. */
const START_TIMEOUT_MS = 120_000

const running = new Set<ChildProcess>()
let exitHookInstalled = false

function killAllOnExit(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const child of running) child.kill('SIGKILL')
  })
}

/** Forks the server `server` with these environment settings and resolves once it listens. */
export async function startServer(server: ServerName, settings: Record<string, string>): Promise<BenchServer> {
  killAllOnExit()
  const port = await freePort()
  const child = fork(SERVE, [], {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, ...settings, VARIANT: server, PORT: String(port) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  running.add(child)
  const exited = new Promise<void>((resolve) => child.once('exit', () => {
    running.delete(child)
    resolve()
  }))
  let timer: NodeJS.Timeout | undefined
  try {
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve())
      child.once('exit', (code, signal) => reject(new Error(`bench server ${server} exited (${signal ?? code}) before it listened`)))
      timer = setTimeout(() => reject(new Error(`bench server ${server} did not listen within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS)
    })
  } catch (err) {
    child.kill('SIGKILL')
    await exited
    throw err
  } finally {
    clearTimeout(timer)
  }
  return {
    pid: child.pid as number,
    url: `http://127.0.0.1:${port}`,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const kill = setTimeout(() => child.kill('SIGKILL'), graceMs)
      await exited
      clearTimeout(kill)
    },
  }
}

/**
 * A private redis-server per fault test. The shared Redis on 6379 must never be stopped, paused
 * or restarted, so tests that need Redis to die, hang (SIGSTOP) or come back empty start their
 * own on a free port with a temp dir for its AOF.
 *
 *   const redis = await startRedisServer(t)             // no persistence: a restart loses data
 *   const redis = await startRedisServer(t, { appendonly: true })
 *   await redis.restart()                                // same port, same dir
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Teardownable } from './database.ts'
import { freePort, waitUntil } from './net.ts'

export interface RedisServerOptions {
  /** Turn on AOF persistence (DESIGN.md's docker-compose runs Redis with AOF on). @default false */
  appendonly?: boolean
  /** AOF fsync policy when `appendonly`; `always` makes a SIGKILL lose nothing. @default 'everysec' */
  appendfsync?: 'always' | 'everysec' | 'no'
  /** How long to wait for PING to answer. @default 10000 */
  startTimeoutMs?: number
  /** More redis-server arguments (a cluster node's: redis-cluster.ts). */
  extraArgs?: readonly string[]
}

export interface RedisServer {
  readonly port: number
  /** redis://127.0.0.1:<port> */
  readonly url: string
  /** Directory holding the AOF (kept across restarts, removed at teardown). */
  readonly dir: string
  /** pid of the current redis-server process (changes on restart); undefined while stopped. */
  readonly pid: number | undefined
  /** Graceful stop (SIGTERM) and wait for exit. A no-op when already stopped. */
  stop(): Promise<void>
  /** Sends `signal` (default SIGKILL) and waits for the process to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>
  /** SIGSTOP: the server keeps its sockets open but answers nothing (a hung Redis). */
  pause(): void
  /** SIGCONT after pause(). */
  resume(): void
  /** Starts the server again after stop/kill (or stops it first), on the same port and dir. */
  restart(): Promise<void>
  /** Starts the server if it is not running. */
  start(): Promise<void>
  /** stdout/stderr of every run so far, for diagnostics. */
  output(): string
}

/** One PING over a raw socket; true on +PONG. A LOADING error (AOF replay) counts as not ready. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    let reply = ''
    const done = (ok: boolean): void => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(1000, () => done(false))
    socket.on('error', () => done(false))
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (chunk) => {
      reply += chunk.toString()
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'))
    })
  })
}

export async function startRedisServer(t?: Teardownable, opts: RedisServerOptions = {}): Promise<RedisServer> {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'quota-redis-'))
  const args = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--save', '',
    '--appendonly', opts.appendonly === true ? 'yes' : 'no',
    '--appendfsync', opts.appendfsync ?? 'everysec',
    '--dir', dir,
    '--daemonize', 'no',
    ...(opts.extraArgs ?? []),
  ]
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let log = ''
  let paused = false

  const running = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null

  const start = async (): Promise<void> => {
    if (running()) return
    const proc = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child = proc
    paused = false
    proc.stdout?.on('data', (b: Buffer) => (log += b.toString()))
    proc.stderr?.on('data', (b: Buffer) => (log += b.toString()))
    exited = new Promise((resolve) => proc.once('exit', () => resolve()))
    let spawnError: Error | undefined
    proc.once('error', (err) => (spawnError = err))
    await waitUntil(() => ping(port), {
      what: `redis-server on port ${port}`,
      timeoutMs: opts.startTimeoutMs ?? 10_000,
      abort: () => {
        if (spawnError) return `could not spawn redis-server: ${spawnError.message}`
        if (proc.exitCode !== null || proc.signalCode !== null) {
          return `exited (code ${proc.exitCode}, signal ${proc.signalCode}) before answering PING:\n${log}`
        }
        return undefined
      },
    })
  }

  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    if (!running() || child?.pid === undefined) return
    process.kill(child.pid, signal)
    // A stopped process only acts on the signal once continued (SIGKILL works regardless).
    if (paused) {
      process.kill(child.pid, 'SIGCONT')
      paused = false
    }
    await exited
  }

  const stop = (): Promise<void> => kill('SIGTERM')

  // If the test process dies without running teardown, do not leave a redis-server behind.
  const onExit = (): void => {
    if (running() && child?.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
  process.on('exit', onExit)

  const server: RedisServer = {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    get pid() {
      return running() ? child?.pid : undefined
    },
    start,
    stop,
    kill,
    pause() {
      if (!running() || child?.pid === undefined) throw new Error('redis-server is not running')
      process.kill(child.pid, 'SIGSTOP')
      paused = true
    },
    resume() {
      if (!running() || child?.pid === undefined) throw new Error('redis-server is not running')
      process.kill(child.pid, 'SIGCONT')
      paused = false
    },
    async restart() {
      await stop()
      await start()
    },
    output: () => log,
  }

  t?.teardown(async () => {
    process.off('exit', onExit)
    await kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  })
  try {
    await start()
  } catch (err) {
    if (!t) {
      await kill('SIGKILL')
      rmSync(dir, { recursive: true, force: true })
    }
    throw err
  }
  return server
}

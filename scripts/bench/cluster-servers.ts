/**
 * Throwaway local Redis Clusters for the cluster benchmark: `masters` redis-server processes with
 * `--cluster-enabled yes` (no replicas, no persistence), each on free ports with a temp dir of its
 * own, joined with `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes` (redis-cli
 * refuses fewer than 3 masters: a 1-master cluster takes every slot with CLUSTER ADDSLOTSRANGE),
 * ready once every node says cluster_state:ok. stop() kills every node by pid and removes its dir;
 * it runs on errors too (callers use try/finally), and an 'exit' hook kills whatever is left if the
 * bench dies first. Self-contained: the bench does not import from test/.
 */
import { execFile, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface ClusterNodeProcess {
  readonly port: number
  readonly pid: number
  readonly dir: string
}

export interface BenchCluster {
  readonly nodes: readonly ClusterNodeProcess[]
  /** Seeds for createClusterClient. */
  readonly seeds: readonly { host: string; port: number }[]
  /** Kills every node (SIGKILL, by pid) and removes its dir. Safe to call twice. */
  stop(): Promise<void>
}

/** A TCP port that was free a moment ago on 127.0.0.1 (the kernel picks it). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = address !== null && typeof address === 'object' ? address.port : 0
      server.close((err) => (err || port === 0 ? reject(err ?? new Error('no port')) : resolve(port)))
    })
  })
}

async function cli(...args: string[]): Promise<string> {
  const { stdout } = await run('redis-cli', args, { timeout: 60_000 })
  return stdout
}

const nodeCli = (port: number, ...args: string[]): Promise<string> => cli('-h', '127.0.0.1', '-p', String(port), ...args)

async function waitFor(what: string, timeoutMs: number, probe: () => Promise<boolean>, abort?: () => string | undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const why = abort?.()
    if (why !== undefined) throw new Error(`${what}: ${why}`)
    if (await probe().catch(() => false)) return
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${timeoutMs} ms`)
    await sleep(100)
  }
}

export async function startBenchCluster(masters: number): Promise<BenchCluster> {
  const children: { child: ChildProcess; dir: string; port: number; exited: Promise<void> }[] = []
  const killAll = (): void => {
    for (const { child } of children) {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }
    }
  }
  process.on('exit', killAll)
  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    killAll()
    await Promise.all(children.map((c) => c.exited))
    for (const { dir } of children) rmSync(dir, { recursive: true, force: true })
    process.off('exit', killAll)
  }
  try {
    for (let i = 0; i < masters; i++) {
      const port = await freePort()
      // The bus port is named: port + 10000 may be taken or past 65535.
      const busPort = await freePort()
      const dir = mkdtempSync(join(tmpdir(), 'quota-bench-cluster-'))
      const child = spawn('redis-server', [
        '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no',
        '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-port', String(busPort),
        // Long: a master busy under the load must not be marked failing by its peers.
        '--cluster-node-timeout', '15000',
        // A node that never met a peer (the 1-master cluster) does not know its own address and
        // names itself "" in CLUSTER SLOTS; announced, every node is 127.0.0.1 in both clusters.
        '--cluster-announce-ip', '127.0.0.1',
      ], { stdio: ['ignore', 'pipe', 'pipe'] })
      let log = ''
      child.stdout?.on('data', (b: Buffer) => (log += b.toString()))
      child.stderr?.on('data', (b: Buffer) => (log += b.toString()))
      let spawnError: Error | undefined
      child.once('error', (err) => (spawnError = err))
      const exited = new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) resolve()
        else child.once('exit', () => resolve())
      })
      children.push({ child, dir, port, exited })
      await waitFor(`redis-server on port ${port}`, 10_000, async () => (await nodeCli(port, 'PING')).trim() === 'PONG', () => {
        if (spawnError) return `could not spawn redis-server: ${spawnError.message}`
        if (child.exitCode !== null || child.signalCode !== null) return `exited before answering PING:\n${log}`
        return undefined
      })
    }
    const ports = children.map((c) => c.port)
    if (masters >= 3) {
      await cli('--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes')
    } else if (masters === 1) {
      await nodeCli(ports[0] as number, 'CLUSTER', 'ADDSLOTSRANGE', '0', '16383')
    } else {
      throw new Error(`a bench cluster has 1 or at least 3 masters, not ${masters}`)
    }
    await waitFor(`the ${masters}-master cluster to be ok`, 30_000, async () => {
      for (const port of ports) {
        const info = await nodeCli(port, 'CLUSTER', 'INFO')
        if (!info.includes('cluster_state:ok') || !info.includes('cluster_slots_ok:16384') || !info.includes(`cluster_known_nodes:${masters}`)) return false
      }
      return true
    })
  } catch (err) {
    await stop()
    throw err
  }
  return {
    nodes: children.map(({ child, port, dir }) => ({ port, pid: child.pid as number, dir })),
    seeds: children.map(({ port }) => ({ host: '127.0.0.1', port })),
    stop,
  }
}

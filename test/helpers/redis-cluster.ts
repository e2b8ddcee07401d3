/**
 * A real local Redis Cluster per test: `masters` masters with `replicasPerMaster` replicas each,
 * every node a redis-server of its own (redis-server.ts) on free ports, joined with
 * `redis-cli --cluster create`, stopped by pid at teardown. Fault tests kill a master and watch
 * its replica take over, or move slots with `redis-cli --cluster reshard`.
 *
 *   const cluster = await startRedisCluster(t)          // 3 masters + 3 replicas
 *   cluster.env                                         // REDIS_CLUSTER_NODES for the service
 *   await cluster.masterOf(slot)                        // the node serving a slot now
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import type { Teardownable } from './database.ts'
import { freePort, waitUntil } from './net.ts'
import { startRedisServer } from './redis-server.ts'
import type { RedisServer } from './redis-server.ts'

const run = promisify(execFile)

export interface RedisClusterOptions {
  /** @default 3 */
  masters?: number
  /** @default 1 */
  replicasPerMaster?: number
  /**
   * cluster-node-timeout, ms: how long a master may be unreachable before its replica is promoted.
   * Short here so failover tests take seconds. @default 1000
   */
  nodeTimeoutMs?: number
  /**
   * min-replicas-to-write of every node: a master with fewer replicas in sync refuses writes
   * (a script fails with NOREPLICAS before running). @default 0
   */
  minReplicasToWrite?: number
}

export interface RedisCluster {
  readonly nodes: readonly RedisServer[]
  /** host:port of every node, comma-separated: REDIS_CLUSTER_NODES. */
  readonly env: string
  readonly seeds: readonly { host: string; port: number }[]
  /** The node serving `slot` now (after failovers and reshards). */
  masterOf(slot: number): Promise<RedisServer>
  /** Nodes that are masters now, each with the number of slots it serves. */
  masters(): Promise<{ node: RedisServer; slots: number }[]>
  /** Runs redis-cli against the cluster (e.g. `--cluster reshard ...`); resolves with its output. */
  cli(...args: string[]): Promise<string>
  /** Resolves when every node agrees the cluster is ok (all slots served). */
  waitHealthy(timeoutMs?: number): Promise<void>
}

async function command(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 10_000 })
  return stdout
}

export async function startRedisCluster(t: Teardownable, options: RedisClusterOptions = {}): Promise<RedisCluster> {
  const masters = options.masters ?? 3
  const replicas = options.replicasPerMaster ?? 1
  const count = masters * (1 + replicas)
  const nodes: RedisServer[] = []
  for (let i = 0; i < count; i++) {
    // The cluster bus port is named explicitly: port + 10000 may be taken, or past 65535.
    const busPort = await freePort()
    nodes.push(await startRedisServer(t, {
      extraArgs: [
        '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-port', String(busPort),
        '--cluster-node-timeout', String(options.nodeTimeoutMs ?? 1000),
        // A replica promoted by a failover serves at once, even if it lagged (the tests measure it).
        '--cluster-replica-validity-factor', '0',
        '--min-replicas-to-write', String(options.minReplicasToWrite ?? 0), '--min-replicas-max-lag', '10',
      ],
    }))
  }
  const addresses = nodes.map((n) => `127.0.0.1:${n.port}`)
  const cli = async (...args: string[]): Promise<string> => {
    const { stdout } = await run('redis-cli', args, { timeout: 120_000 })
    return stdout
  }
  await cli('--cluster', 'create', ...addresses, '--cluster-replicas', String(replicas), '--cluster-yes')

  const byPort = new Map(nodes.map((n) => [n.port, n]))
  // Replicas a master can have now: one fewer per dead node (a killed master's replica took over).
  const liveReplicas = (): number => Math.floor((nodes.filter((n) => n.pid !== undefined).length - masters) / masters)
  const slotTable = async (): Promise<[number, number, number][]> => {
    // Ask a node that is up: CLUSTER SLOTS gives [start, end, [host, port, id], replicas...].
    for (const node of nodes) {
      if (node.pid === undefined) continue
      const client = new Redis({ host: '127.0.0.1', port: node.port, lazyConnect: true, maxRetriesPerRequest: 0 })
      client.on('error', () => {})
      try {
        await client.connect()
        const slots = await client.cluster('SLOTS')
        return slots.map(([start, end, master]): [number, number, number] => [start, end, Number(master?.[1])])
      } catch {
        // try the next node
      } finally {
        client.disconnect()
      }
    }
    throw new Error('no cluster node answers CLUSTER SLOTS')
  }
  const waitHealthy = async (timeoutMs = 30_000): Promise<void> => {
    await waitUntil(async () => {
      for (const node of nodes) {
        if (node.pid === undefined) continue
        const info = await command(node.port, 'CLUSTER', 'INFO').catch(() => '')
        if (!info.includes('cluster_state:ok') || !info.includes('cluster_slots_ok:16384')) return false
      }
      const table = await slotTable()
      if (!table.every(([, , port]) => byPort.get(port)?.pid !== undefined)) return false
      // Every live master has its replicas attached and in sync (a failover needs one).
      for (const [, , port] of table) {
        const info = await command(port, 'INFO', 'replication').catch(() => '')
        const online = (info.match(/^slave\d+:.*state=online/gm) ?? []).length
        if (online < Math.min(replicas, liveReplicas())) return false
      }
      return true
    }, { what: 'the Redis Cluster to be ok on every live node', timeoutMs, intervalMs: 200 })
  }
  await waitHealthy()

  const cluster: RedisCluster = {
    nodes,
    env: addresses.join(','),
    seeds: nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
    async masterOf(slot) {
      const row = (await slotTable()).find(([start, end]) => start <= slot && slot <= end)
      const node = row === undefined ? undefined : byPort.get(row[2])
      if (node === undefined) throw new Error(`no master serves slot ${slot}`)
      return node
    },
    async masters() {
      const counts = new Map<number, number>()
      for (const [start, end, port] of await slotTable()) counts.set(port, (counts.get(port) ?? 0) + end - start + 1)
      return [...counts].map(([port, slots]) => ({ node: byPort.get(port) as RedisServer, slots }))
    },
    cli: (...args) => cli(...args),
    waitHealthy,
  }
  return cluster
}

/**
 * Cluster benchmark (issue 14): the library decision path — RedisCounterStore.decide, a consume of
 * one api_call for a user drawn at random from `users`, `inFlight` decisions outstanding from one
 * Node process, bounded in time — against a Redis Cluster of 1 master and one of 3 masters (no
 * replicas), both up for the whole run, in interleaved rounds (the order alternates per round).
 * A third variant is a control: the 3-master cluster with decisions only for the users of one of
 * its masters, that master's part (about a third) of the decisions in flight, so it runs about as
 * many decisions per second as the 1-master cluster's, in calls as large, while the other two idle. It tells what the cluster's size costs a master from what three busy
 * redis-servers sharing this machine's cores cost each other.
 *
 * Per configuration and round: decisions/s, Node CPU per decision, and per master the share of
 * decisions it ran and its Redis CPU per decision. How a master's decisions are counted: this
 * process knows where every decision goes — the user's bucket is its hash tag, the tag's slot is
 * served by one master (CLUSTER SLOTS, read once; no slot moves during the run) — so each
 * completed decision is counted for its master. The servers' own counters cross-check it: each
 * master's share of keyspace lookups (INFO stats keyspace_hits + keyspace_misses) and its EVALSHA
 * calls (INFO commandstats; one call decides up to 16 decisions of one bucket). A master's Redis
 * CPU is the delta of INFO cpu used_cpu_user + used_cpu_sys over the round (the whole
 * redis-server process, idle cron work included), divided by the decisions it ran.
 */
import { readFileSync } from 'node:fs'
import calculateSlot from 'cluster-key-slot'
import { Redis } from 'ioredis'
import { connectRedis, createClusterClient } from '../../src/counters/redis/client.ts'
import type { Cluster } from '../../src/counters/redis/client.ts'
import { RedisCounterStore } from '../../src/counters/redis/redis-store.ts'
import type { DecisionRequest } from '../../src/counters/store.ts'
import { benchUserId } from './bench-users.ts'
import { startBenchCluster } from './cluster-servers.ts'
import type { BenchCluster } from './cluster-servers.ts'

export interface ClusterBenchOptions {
  rounds: number
  durationS: number
  inFlight: number
  /** Users decisions are drawn from at random. */
  users: number
  /** Seconds of load per configuration after the seeding pass, before the rounds. */
  warmupS: number
  /** Seconds with no load, after the warm-up, over which each master's idle CPU is measured. */
  idleS: number
  /** Run the control variant (3 masters, one master's users only). @default true */
  control?: boolean
}

export interface MasterRound {
  port: number
  slots: number
  decisions: number
  /** Of the variant's decisions, by this process' count. */
  share: number
  /** Share of keyspace hits + misses (the server's own count). */
  keyspaceShare: number
  evalshaCalls: number
  reads: number
  commands: number
  /** Voluntary context switches of the master's process over the round (it slept in epoll_wait and woke). */
  wakeups: number
  /** Involuntary ones (preempted: another process wanted its CPU). */
  preemptions: number
  redisCpuUsPerDecision: number
  /** Of which in the kernel (used_cpu_sys). */
  redisSysUsPerDecision: number
  /** The same less the master's idle CPU rate (measureIdle) over the round's seconds. */
  redisCpuUsPerDecisionLessIdle: number
}

export interface ClusterRound {
  variant: string
  masters: number
  round: number
  decisions: number
  decisionsPerS: number
  nodeCpuUsPerDecision: number
  /** All masters' CPU over all decisions. */
  redisCpuUsPerDecision: number
  perMaster: MasterRound[]
}

export interface MasterSummary {
  port: number
  slots: number
  share: number
  keyspaceShare: number
  decisionsPerCall: number
  decisionsPerRead: number
  commandsPerDecision: number
  decisionsPerWakeup: number
  preemptionsPer1000: number
  redisCpuUsPerDecision: number
  redisSysUsPerDecision: number
  redisCpuUsPerDecisionLessIdle: number
  idleCpuMsPerS: number
}

export interface ClusterSummary {
  variant: string
  masters: number
  decisionsPerS: number
  nodeCpuUsPerDecision: number
  redisCpuUsPerDecision: number
  /** Per master that ran decisions, medians over rounds. */
  perMaster: MasterSummary[]
  /** Largest share over smallest among the masters that ran decisions (median over rounds). */
  shareRatio: number
  /** Highest Redis CPU µs per decision of a master that ran decisions. */
  maxMasterCpuUsPerDecision: number
  /** Same, less idle CPU. */
  maxMasterCpuUsPerDecisionLessIdle: number
}

interface NodeCounters {
  cpuS: number
  /** used_cpu_sys alone (system calls: the sockets, epoll). */
  sysS: number
  evalsha: number
  keyspaceOps: number
  /** total_reads_processed: socket reads (a pipeline is one or a few). */
  reads: number
  /** Every command's calls (INFO commandstats, commands run inside scripts included). */
  commands: number
  /** Context switches of the redis-server process (/proc/<pid>/status): it slept (woke up again), it was preempted. */
  voluntary: number
  involuntary: number
}

function contextSwitches(pid: number): { voluntary: number; involuntary: number } {
  let status = ''
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    // not Linux: NaN below
  }
  const num = (re: RegExp): number => Number(re.exec(status)?.[1] ?? Number.NaN)
  return {
    voluntary: num(/^voluntary_ctxt_switches:\s+(\d+)/m),
    involuntary: num(/^nonvoluntary_ctxt_switches:\s+(\d+)/m),
  }
}

async function nodeCounters(redis: Redis, pid: number): Promise<NodeCounters> {
  const info = String(await redis.call('INFO', 'cpu', 'stats', 'commandstats'))
  const num = (re: RegExp): number => Number(re.exec(info)?.[1] ?? 0)
  return {
    cpuS: num(/used_cpu_user:([\d.]+)/) + num(/used_cpu_sys:([\d.]+)/),
    sysS: num(/used_cpu_sys:([\d.]+)/),
    evalsha: num(/cmdstat_evalsha:calls=(\d+)/),
    keyspaceOps: num(/keyspace_hits:(\d+)/) + num(/keyspace_misses:(\d+)/),
    reads: num(/total_reads_processed:(\d+)/),
    commands: [...info.matchAll(/cmdstat_[^:]+:calls=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0),
    ...contextSwitches(pid),
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? Number.NaN : (s[Math.floor(s.length / 2)] as number)
}

interface Config {
  masters: number
  cluster: BenchCluster
  client: Cluster
  store: RedisCounterStore
  /** One plain connection per master, for INFO. */
  stats: Redis[]
  /** redis-server pid of each master. */
  pids: number[]
  ports: number[]
  slots: number[]
  /** Index into `ports` of the master serving each user. */
  masterOfUser: Uint8Array
  /** CPU ms per second each master spends with no load (idleCpu), measured before the rounds. */
  idleMsPerS: number[]
}

const LIMIT = 2_000_000_000 * 1_000_000 // the bench tier's api_calls limit, micro-units: never reached

async function setUp(masters: number, users: readonly string[], prefix: string): Promise<Config> {
  const cluster = await startBenchCluster(masters)
  const stats: Redis[] = []
  let client: Cluster | undefined
  try {
    const ports = cluster.nodes.map((n) => n.port)
    for (const port of ports) stats.push(new Redis({ host: '127.0.0.1', port, connectionName: 'bench-cluster-stats' }))
    const table = await (stats[0] as Redis).cluster('SLOTS')
    const slotOwner = new Int32Array(16_384).fill(-1)
    const slots = ports.map(() => 0)
    for (const [start, end, owner] of table) {
      const index = ports.indexOf(Number(owner?.[1]))
      for (let s = start; s <= end; s++) slotOwner[s] = index
      if (index >= 0) slots[index] = (slots[index] ?? 0) + end - start + 1
    }
    client = createClusterClient({ nodes: cluster.seeds, commandTimeoutMs: 5000, connectionName: 'bench-cluster' })
    await connectRedis(client, cluster.seeds.map((s) => `${s.host}:${s.port}`).join(','))
    const store = new RedisCounterStore(client, { prefix, commandTimeoutMs: 5000 })
    await store.start()
    const masterOfUser = new Uint8Array(users.length)
    users.forEach((u, i) => {
      const owner = slotOwner[calculateSlot(store.keys.tag(store.keys.slotOf(u).bucket))] ?? -1
      if (owner < 0) throw new Error(`no master serves user ${u}'s slot`)
      masterOfUser[i] = owner
    })
    const pids = cluster.nodes.map((n) => n.pid)
    return { masters, cluster, client, store, stats, pids, ports, slots, masterOfUser, idleMsPerS: ports.map(() => 0) }
  } catch (err) {
    client?.disconnect()
    for (const s of stats) s.disconnect()
    await cluster.stop()
    throw err
  }
}

async function tearDown(config: Config): Promise<void> {
  await config.store.close().catch(() => {})
  config.client.disconnect()
  for (const s of config.stats) s.disconnect()
  await config.cluster.stop()
}

/** A load on a cluster: `inFlight` decisions outstanding for users drawn at random from `pool` (indexes into the users). */
interface Variant {
  name: string
  config: Config
  pool: Uint32Array
  inFlight: number
}

/** `inFlight` loops deciding for random users of the pool until `durationS` ends; decisions counted per master. */
async function drive(variant: Variant, users: readonly string[], day: string, durationS: number): Promise<number[]> {
  const { config, pool, inFlight } = variant
  const perMaster = config.ports.map(() => 0)
  const end = performance.now() + durationS * 1000
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      const u = pool[Math.floor(Math.random() * pool.length)] as number
      const request: DecisionRequest = {
        mode: 'consume', userId: users[u] as string, day, now: Date.now(),
        metrics: [{ metric: 'api_calls', amount: 1_000_000, limit: LIMIT }],
      }
      const answer = await config.store.decide(request)
      if (answer.outcome !== 'allowed') throw new Error(`a decision was ${answer.outcome}, not allowed`)
      const m = config.masterOfUser[u] as number
      perMaster[m] = (perMaster[m] ?? 0) + 1
    }
  }
  await Promise.all(Array.from({ length: inFlight }, () => worker()))
  return perMaster
}

const counters = (config: Config): Promise<NodeCounters>[] => config.stats.map((s, i) => nodeCounters(s, config.pids[i] as number))

async function measure(variant: Variant, round: number, users: readonly string[], day: string, options: ClusterBenchOptions): Promise<ClusterRound> {
  const { config } = variant
  const before = await Promise.all(counters(config))
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const perMaster = await drive(variant, users, day, options.durationS)
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const after = await Promise.all(counters(config))
  const decisions = perMaster.reduce((a, b) => a + b, 0)
  const deltas = config.ports.map((_, i): NodeCounters => {
    const b = before[i] as NodeCounters
    const a = after[i] as NodeCounters
    return {
      cpuS: a.cpuS - b.cpuS, sysS: a.sysS - b.sysS, evalsha: a.evalsha - b.evalsha, keyspaceOps: a.keyspaceOps - b.keyspaceOps, reads: a.reads - b.reads,
      commands: a.commands - b.commands, voluntary: a.voluntary - b.voluntary, involuntary: a.involuntary - b.involuntary,
    }
  })
  const keyspaceTotal = deltas.reduce((s, d) => s + d.keyspaceOps, 0)
  const cpuTotal = deltas.reduce((s, d) => s + d.cpuS, 0)
  return {
    variant: variant.name,
    masters: config.masters,
    round,
    decisions,
    decisionsPerS: decisions / seconds,
    nodeCpuUsPerDecision: (cpu.user + cpu.system) / decisions,
    redisCpuUsPerDecision: (cpuTotal * 1e6) / decisions,
    perMaster: config.ports.map((port, i) => {
      const d = deltas[i] as NodeCounters
      const n = perMaster[i] ?? 0
      return {
        port,
        slots: config.slots[i] ?? 0,
        decisions: n,
        share: n / decisions,
        keyspaceShare: d.keyspaceOps / keyspaceTotal,
        evalshaCalls: d.evalsha,
        reads: d.reads,
        commands: d.commands,
        wakeups: d.voluntary,
        preemptions: d.involuntary,
        redisCpuUsPerDecision: (d.cpuS * 1e6) / n,
        redisSysUsPerDecision: (d.sysS * 1e6) / n,
        redisCpuUsPerDecisionLessIdle: ((d.cpuS - ((config.idleMsPerS[i] ?? 0) / 1000) * seconds) * 1e6) / n,
      }
    }),
  }
}

/** Idle Redis CPU of every master of every configuration over one `seconds` window (cluster bus and cron): ms per second. */
async function measureIdle(configs: Config[], seconds: number): Promise<void> {
  const all = (): Promise<NodeCounters[][]> => Promise.all(configs.map((c) => Promise.all(counters(c))))
  const before = await all()
  const t0 = performance.now()
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
  const after = await all()
  const s = (performance.now() - t0) / 1000
  configs.forEach((c, k) => {
    c.idleMsPerS = (after[k] as NodeCounters[]).map((a, i) => ((a.cpuS - (before[k]?.[i] as NodeCounters).cpuS) * 1000) / s)
  })
}

export const ONE_MASTER = '1 master'
export const THREE_MASTERS = '3 masters'
export const CONTROL = "3 masters, one master's users only"

export async function runCluster(options: ClusterBenchOptions) {
  const users = Array.from({ length: options.users }, (_, i) => benchUserId(5, i))
  const all = Uint32Array.from(users.keys())
  const day = new Date().toISOString().slice(0, 10)
  const configs: Config[] = []
  const variants: Variant[] = []
  const rounds: ClusterRound[] = []
  try {
    const one = await setUp(1, users, 'bench:')
    configs.push(one)
    const three = await setUp(3, users, 'bench:')
    configs.push(three)
    const { inFlight } = options
    variants.push({ name: ONE_MASTER, config: one, pool: all, inFlight }, { name: THREE_MASTERS, config: three, pool: all, inFlight })
    if (options.control !== false) {
      // In flight: that master's part of the 3-master load (about a third), so its decide.lua calls
      // carry as many decisions each as in the other variants (a bucket's decisions of one turn go
      // in one call: 1000 in flight over a third of the buckets would make calls larger, and cheaper).
      const pool = all.filter((u) => three.masterOfUser[u] === 0)
      variants.push({ name: CONTROL, config: three, pool, inFlight: Math.max(1, Math.round((inFlight * pool.length) / all.length)) })
    }
    for (const config of configs) {
      // Warm-up: every user once, 200 at a time (a first decision finds no state and seeds it from
      // zero: not what is measured), then the measured load (JIT, connections, script caches).
      for (let i = 0; i < users.length; i += 200) {
        await Promise.all(users.slice(i, i + 200).map((userId) => config.store.decide({
          mode: 'consume', userId, day, now: Date.now(), metrics: [{ metric: 'api_calls', amount: 1_000_000, limit: LIMIT }],
        })))
      }
    }
    for (const variant of variants) await drive(variant, users, day, options.warmupS)
    await measureIdle(configs, options.idleS)
    for (let round = 1; round <= options.rounds; round++) {
      const order = round % 2 === 1 ? variants : [...variants].reverse()
      for (const variant of order) rounds.push(await measure(variant, round, users, day, options))
    }
  } finally {
    for (const config of configs) await tearDown(config)
  }
  const summary: ClusterSummary[] = variants.map(({ name, config }) => {
    const rs = rounds.filter((r) => r.variant === name)
    const loaded = config.ports.map((_, i) => i).filter((i) => rs.every((r) => (r.perMaster[i]?.decisions ?? 0) > 0))
    const perMaster = loaded.map((i): MasterSummary => {
      const ms = rs.map((r) => r.perMaster[i] as MasterRound)
      return {
        port: config.ports[i] as number,
        slots: config.slots[i] ?? 0,
        share: median(ms.map((m) => m.share)),
        keyspaceShare: median(ms.map((m) => m.keyspaceShare)),
        decisionsPerCall: median(ms.map((m) => m.decisions / m.evalshaCalls)),
        decisionsPerRead: median(ms.map((m) => m.decisions / m.reads)),
        commandsPerDecision: median(ms.map((m) => m.commands / m.decisions)),
        decisionsPerWakeup: median(ms.map((m) => m.decisions / m.wakeups)),
        preemptionsPer1000: median(ms.map((m) => (m.preemptions * 1000) / m.decisions)),
        redisCpuUsPerDecision: median(ms.map((m) => m.redisCpuUsPerDecision)),
        redisSysUsPerDecision: median(ms.map((m) => m.redisSysUsPerDecision)),
        redisCpuUsPerDecisionLessIdle: median(ms.map((m) => m.redisCpuUsPerDecisionLessIdle)),
        idleCpuMsPerS: config.idleMsPerS[i] ?? Number.NaN,
      }
    })
    const shares = (r: ClusterRound): number[] => loaded.map((i) => r.perMaster[i]?.share ?? Number.NaN)
    return {
      variant: name,
      masters: config.masters,
      decisionsPerS: median(rs.map((r) => r.decisionsPerS)),
      nodeCpuUsPerDecision: median(rs.map((r) => r.nodeCpuUsPerDecision)),
      redisCpuUsPerDecision: median(rs.map((r) => r.redisCpuUsPerDecision)),
      perMaster,
      shareRatio: median(rs.map((r) => Math.max(...shares(r)) / Math.min(...shares(r)))),
      maxMasterCpuUsPerDecision: Math.max(...perMaster.map((m) => m.redisCpuUsPerDecision)),
      maxMasterCpuUsPerDecisionLessIdle: Math.max(...perMaster.map((m) => m.redisCpuUsPerDecisionLessIdle)),
    }
  })
  // Ratios per round (a variant's figure against the same round's 1-master one), then the median.
  const ratio = (variant: string, pick: (r: ClusterRound) => number): number => {
    const xs: number[] = []
    for (let round = 1; round <= options.rounds; round++) {
      const a = rounds.find((r) => r.round === round && r.variant === ONE_MASTER)
      const b = rounds.find((r) => r.round === round && r.variant === variant)
      if (a && b) xs.push(pick(b) / pick(a))
    }
    return median(xs)
  }
  const maxMasterCpu = (r: ClusterRound): number => Math.max(...r.perMaster.filter((m) => m.decisions > 0).map((m) => m.redisCpuUsPerDecision))
  const maxMasterCpuLessIdle = (r: ClusterRound): number =>
    Math.max(...r.perMaster.filter((m) => m.decisions > 0).map((m) => m.redisCpuUsPerDecisionLessIdle))
  return {
    users: options.users,
    inFlight: Object.fromEntries(variants.map((v) => [v.name, v.inFlight])),
    rounds,
    summary,
    /** 3 masters / 1 master, medians of per-round ratios. */
    decisionsPerSRatio: ratio(THREE_MASTERS, (r) => r.decisionsPerS),
    /** Same, of the highest per-master Redis CPU µs per decision. */
    maxMasterCpuRatio: ratio(THREE_MASTERS, maxMasterCpu),
    maxMasterCpuLessIdleRatio: ratio(THREE_MASTERS, maxMasterCpuLessIdle),
    /** The control's loaded master against the 1-master cluster's, Redis CPU µs per decision (NaN without the control). */
    controlCpuRatio: ratio(CONTROL, maxMasterCpu),
    controlCpuLessIdleRatio: ratio(CONTROL, maxMasterCpuLessIdle),
  }
}

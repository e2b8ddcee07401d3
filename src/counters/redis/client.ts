/**
 * The Redis connection used for decisions. Its options are chosen so a decision can never hang
 * or be applied twice:
 * - `commandTimeout` bounds every call (REDIS_COMMAND_TIMEOUT_MS), after which the fail mode applies;
 * - `enableOfflineQueue: false` fails a call at once while disconnected instead of parking it;
 * - `autoResendUnfulfilledCommands: false` stops ioredis re-sending, after a reconnect, a decision
 *   whose answer was lost (Redis may already have applied it).
 * A call that timed out may still sit in Redis' socket buffer (Redis paused, not dead) and run
 * later; the scripts refuse to apply a decision past its deadline (see ServerClock), so a 503'd
 * request is never counted afterwards.
 */
import calculateSlot from 'cluster-key-slot'
import { Cluster, Redis } from 'ioredis'
import type { ChainableCommander } from 'ioredis'

/** The client types, for the composition roots (nothing outside counters/redis imports ioredis). */
export type { Cluster, Redis }

/**
 * What the store talks to: one Redis, or a Redis Cluster. Every call the store makes works on
 * both (each script call's keys share one hash tag, so one slot); execBatch and loadScript
 * below are the two places that must tell them apart.
 */
export type RedisClient = Redis | Cluster

export function isCluster(client: RedisClient): client is Cluster {
  return client instanceof Cluster
}

type Reply = [Error | null, unknown]
type Invoke = (...args: unknown[]) => Promise<unknown>

/** A command `build` queued: its name and arguments. */
interface Queued {
  name: string
  args: unknown[]
}

/** Answers that mean Redis refused the command (ran nothing): safe to send again where it points. */
const REDIRECT = /^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN) /

/**
 * Runs the commands `build` queues and gives their replies in order, as pipeline.exec() does.
 * On one Redis they go as one pipeline. On a cluster a pipeline must stay on one node, so the
 * commands are grouped by the master serving their key's slot and each group goes as one pipeline
 * on that master's connection, all at once; a command the node refused (MOVED, ASK, TRYAGAIN,
 * CLUSTERDOWN: nothing ran) is sent again through the cluster client, which follows the redirect.
 */
export async function execBatch(client: RedisClient, build: (pipeline: ChainableCommander) => void): Promise<Reply[]> {
  if (!isCluster(client)) {
    const pipeline = client.pipeline()
    build(pipeline)
    return ((await pipeline.exec()) ?? []) as Reply[]
  }
  const queued: Queued[] = []
  const recorder: ChainableCommander = new Proxy({} as ChainableCommander, {
    get(_target, name) {
      return (...args: unknown[]) => {
        queued.push({ name: String(name), args })
        return recorder
      }
    },
  })
  build(recorder)
  const replies: Reply[] = new Array<Reply>(queued.length)
  const byNode = new Map<Redis | undefined, number[]>()
  queued.forEach((command, i) => {
    // The key: EVALSHA's first key follows the sha and the key count; the others start with it.
    const key = String(command.name === 'evalsha' ? command.args[2] : command.args[0])
    const node = masterFor(client, key)
    const list = byNode.get(node)
    if (list) list.push(i)
    else byNode.set(node, [i])
  })
  const viaCluster = (command: Queued): Promise<Reply> => {
    const invoke = (client as unknown as Record<string, Invoke>)[command.name]
    if (typeof invoke !== 'function') return Promise.resolve([new TypeError(`no command ${command.name}`), null])
    return invoke.apply(client, command.args).then((reply): Reply => [null, reply], (err: Error): Reply => [err, null])
  }
  await Promise.all([...byNode].map(async ([node, indexes]) => {
    let results: Reply[]
    if (node === undefined) {
      results = await Promise.all(indexes.map((i) => viaCluster(queued[i] as Queued)))
    } else {
      const pipeline = node.pipeline()
      const methods = pipeline as unknown as Record<string, (...args: unknown[]) => unknown>
      for (const i of indexes) {
        const command = queued[i] as Queued
        methods[command.name]?.apply(pipeline, command.args)
      }
      results = await pipeline.exec().then((r) => (r ?? []) as Reply[], (err: Error) => indexes.map((): Reply => [err, null]))
      results = await Promise.all(results.map((reply, j) =>
        reply[0] !== null && REDIRECT.test(reply[0].message) ? viaCluster(queued[indexes[j] as number] as Queued) : reply))
    }
    indexes.forEach((i, j) => {
      replies[i] = results[j] ?? [new Error('no reply from redis'), null]
    })
  }))
  return replies
}

/**
 * Loads a script into Redis' script cache. A cluster's nodes each keep their own cache, and a
 * replica promoted by a failover may not have it: on a cluster every master loads it.
 */
export async function loadScript(client: RedisClient, source: string): Promise<void> {
  if (!isCluster(client)) {
    await client.script('LOAD', source)
    return
  }
  await Promise.all(servingMasters(client).map((node) => node.script('LOAD', source)))
}

/**
 * The connections to the masters serving slots now, by the client's slot map (not
 * `nodes('master')`: while a client connects, that also lists seed nodes it is about to drop).
 */
export function servingMasters(cluster: Cluster): Redis[] {
  const keys = new Set<string>()
  for (const owners of cluster.slots) if (owners?.[0] !== undefined) keys.add(owners[0])
  return cluster.nodes('master').filter((node) => keys.has(`${node.options.host}:${node.options.port}`))
}

/** The connection to the master serving `key`'s slot, as the client's slot map says now. */
export function masterFor(cluster: Cluster, key: string): Redis | undefined {
  const nodeKey = cluster.slots[calculateSlot(key)]?.[0]
  if (nodeKey === undefined) return undefined
  return cluster.nodes('master').find((node) => `${node.options.host}:${node.options.port}` === nodeKey)
}

/** The connection a command on `key` went to: the client itself, or on a cluster its master's. */
export function connectionFor(client: RedisClient, key: string): Redis | undefined {
  return isCluster(client) ? masterFor(client, key) : client
}

/** Seed nodes of a cluster, `host:port` each (REDIS_CLUSTER_NODES). */
export interface ClusterNode {
  host: string
  port: number
}

export interface ClusterClientOptions extends Omit<RedisClientOptions, 'url' | 'autoPipelining'> {
  nodes: readonly ClusterNode[]
}

/**
 * A Redis Cluster client with the decision connection's guarantees (see the top of this file) on
 * every node connection, and:
 * - MOVED, ASK, TRYAGAIN and CLUSTERDOWN answers are followed: Redis refused those commands, so
 *   sending them again cannot apply anything twice;
 * - `retryDelayOnFailover: 0`: a command whose connection closed before its answer is failed, never
 *   sent again (it may have run: the fail mode applies, and the script's deadline stops a late run);
 * - the store's batches go through execBatch: one pipeline per master holding any of a turn's
 *   decisions, so a turn costs one write per master.
 */
export function createClusterClient(options: ClusterClientOptions): Cluster {
  const cluster = new Cluster(options.nodes.map((n) => ({ host: n.host, port: n.port })), {
    lazyConnect: true,
    // A cluster connects to each node lazily, on its first command; without a queue, a command for
    // a node still connecting is refused ("Connection is closed"). Queued commands are bounded by
    // the node connections' commandTimeout (counted from the call), and a queued decision sent
    // late is refused by its script's deadline, so the queue parks nothing for long.
    enableOfflineQueue: true,
    // Batches are pipelined per node by execBatch; ioredis' auto-pipelining would hold a node's
    // commands while one pipeline to it is in flight (a queue, not a batch).
    enableAutoPipelining: false,
    retryDelayOnFailover: 0,
    retryDelayOnClusterDown: 100,
    retryDelayOnTryAgain: 50,
    retryDelayOnMoved: 0,
    maxRedirections: 16,
    // A failover or a reshard shows up as MOVED answers, which refresh the map at once; this
    // catches what no command hit.
    slotsRefreshInterval: 5000,
    slotsRefreshTimeout: Math.max(1000, options.commandTimeoutMs * 4),
    clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
    redisOptions: {
      commandTimeout: options.commandTimeoutMs,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      connectTimeout: Math.max(1000, options.commandTimeoutMs * 4),
      connectionName: options.connectionName ?? 'quota',
    },
  })
  const where = options.nodes.map((n) => `${n.host}:${n.port}`).join(',')
  let down = false
  cluster.on('error', (err: Error) => {
    if (!down) options.logger?.warn({ err: err.message, nodes: where }, 'redis cluster connection error')
    down = true
  })
  cluster.on('ready', () => {
    if (down) options.logger?.info({ nodes: where }, 'redis cluster connection restored')
    down = false
  })
  return cluster
}
import type { Logger } from 'pino'
import { redactUrl } from '../../config.ts'

export { redactUrl }

export interface RedisClientOptions {
  url: string
  commandTimeoutMs: number
  logger?: Pick<Logger, 'warn' | 'info'>
  /** Name shown by CLIENT LIST. */
  connectionName?: string
  /**
   * Send the commands of one event-loop tick as one pipeline (ioredis enableAutoPipelining).
   * Off by default: the counter store already batches decisions per event-loop turn (see
   * ScriptBatcher in batcher.ts), and ioredis sends its own script commands inside auto-pipelines as full
   * EVAL bodies (it remembers "script sent" per socket, and a pipeline counts as a new one).
   * @default false
   */
  autoPipelining?: boolean
}

export function createRedisClient(options: RedisClientOptions): Redis {
  const redis = new Redis(options.url, {
    lazyConnect: true,
    commandTimeout: options.commandTimeoutMs,
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    connectTimeout: Math.max(1000, options.commandTimeoutMs * 4),
    // Reconnect quickly and forever: decisions resume by themselves when Redis returns.
    retryStrategy: (times) => Math.min(50 * times, 1000),
    connectionName: options.connectionName ?? 'quota',
    enableAutoPipelining: options.autoPipelining ?? false,
  })
  let down = false
  redis.on('error', (err: Error) => {
    if (!down) options.logger?.warn({ err: err.message, url: redactUrl(options.url) }, 'redis connection error')
    down = true
  })
  redis.on('ready', () => {
    if (down) options.logger?.info({ url: redactUrl(options.url) }, 'redis connection restored')
    down = false
  })
  return redis
}

/** Connects a lazy client, failing within `timeoutMs` with a message naming the address. */
export async function connectRedis(redis: RedisClient, url: string, timeoutMs = 5000): Promise<void> {
  if (redis.status === 'ready' && !isCluster(redis)) return
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([
      (async () => {
        if (redis.status === 'wait') await redis.connect()
        else if (redis.status !== 'ready') await new Promise<void>((res) => redis.once('ready', () => res()))
        // A cluster connects to its masters lazily, on their first command: connect them now, not
        // in the first burst of decisions (where a slow connect fails every command queued on it).
        if (isCluster(redis)) await Promise.all(servingMasters(redis).map((node) => node.ping()))
      })(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
      }),
    ])
  } catch (err) {
    throw new Error(`cannot reach Redis at ${redactUrl(url)}: ${(err as Error).message}`, { cause: err })
  } finally {
    if (timer) clearTimeout(timer)
  }
}

/**
 * Tracks the offset between this process' clock and Redis' clock (TIME), so deadlines passed to
 * scripts are expressed in Redis time. Re-measured periodically; on one machine it is ~0.
 */
export class ServerClock {
  #offsetMs = 0
  #timer: NodeJS.Timeout | undefined

  constructor(private readonly redis: RedisClient) {}

  get offsetMs(): number {
    return this.#offsetMs
  }

  /** Local epoch milliseconds -> Redis epoch milliseconds. */
  toServer(localMs: number): number {
    return localMs + this.#offsetMs
  }

  async sync(): Promise<void> {
    const before = Date.now()
    const [sec, usec] = await this.redis.time()
    const after = Date.now()
    const server = Number(sec) * 1000 + Math.floor(Number(usec) / 1000)
    this.#offsetMs = server - (before + after) / 2
  }

  start(intervalMs = 60_000): void {
    this.#timer = setInterval(() => {
      this.sync().catch(() => {})
    }, intervalMs)
    this.#timer.unref()
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer)
  }
}

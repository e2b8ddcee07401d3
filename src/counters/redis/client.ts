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
import { Redis } from 'ioredis'

/** The client type, for the composition roots (nothing outside counters/redis imports ioredis). */
export type { Redis }
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
export async function connectRedis(redis: Redis, url: string, timeoutMs = 5000): Promise<void> {
  if (redis.status === 'ready') return
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([
      redis.status === 'wait' ? redis.connect() : new Promise<void>((res) => redis.once('ready', () => res())),
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

  constructor(private readonly redis: Redis) {}

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

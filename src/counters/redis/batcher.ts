/**
 * Micro-batching transport for script calls. The items submitted during one event-loop turn are
 * sent when it ends (setImmediate), or as soon as one bucket has `maxPerCall` of them: one script
 * call per bucket, and the calls of the turn's end in one pipeline. Under load that is one socket
 * write and one Redis read for dozens of decisions instead of one each; alone, a decision waits
 * only for the turn it was made in to finish. What goes into a call and how its reply splits into
 * answers is the codec's business (decide-protocol.ts); this module only moves them.
 */
import { CounterUnavailableError } from '../errors.ts'
import { connectionFor, execBatch } from './client.ts'
import type { Redis, RedisClient } from './client.ts'
import { classify, isNoScript } from './errors.ts'
import type { LuaScript, ScriptArgument } from './lua-script.ts'

/** Builds one call from the items of one bucket, and splits its reply into one answer per item. */
export interface BatchCodec<Item, Answer> {
  script: LuaScript
  encode(bucket: number, items: readonly Item[]): { numKeys: number; keysThenArgs: ScriptArgument[] }
  decode(reply: unknown, items: readonly Item[]): Answer[]
}

/**
 * Most items one call takes by default; a full call goes out at once instead of at the end of
 * the turn. Redis runs nothing else while a script runs, so a burst for one bucket is cut into
 * short calls that other clients' commands slip between, and Redis starts deciding while this
 * process is still making decisions (BENCHMARKS.md has the measurements behind 16).
 */
export const MAX_ITEMS_PER_CALL = 16

/** What the batcher reports (telemetry): the size of each call, and commands that timed out. */
export interface BatchHooks {
  /** One script call sent with `size` items. */
  batch?(size: number): void
  /** A call failed because the client's command timeout ran out. */
  commandTimeout?(): void
}

/**
 * Replicas every call's writes must reach before its answers count (REDIS_WAIT_REPLICAS): a WAIT
 * on the connection that ran it, per node and per batch. Calls whose writes did not reach them in
 * `timeoutMs` fail (CounterUnavailableError: the fail mode answers) although the master applied
 * them: counted, never admitted. So no admitted decision is lost when a replica takes over.
 */
export interface ReplicaWait {
  replicas: number
  timeoutMs: number
}

/** ioredis' message when `commandTimeout` runs out. */
function isCommandTimeout(err: unknown): boolean {
  return err instanceof Error && err.message === 'Command timed out'
}

interface Queued<Item, Answer> {
  item: Item
  resolve: (answer: Answer) => void
  reject: (err: Error) => void
}

interface Call<Item, Answer> {
  queued: Queued<Item, Answer>[]
  numKeys: number
  keysThenArgs: ScriptArgument[]
}

export class ScriptBatcher<Item, Answer> {
  /** Items waiting for the end of this turn, by bucket. */
  #byBucket = new Map<number, Queued<Item, Answer>[]>()

  constructor(
    private readonly redis: RedisClient,
    private readonly codec: BatchCodec<Item, Answer>,
    private readonly maxPerCall = MAX_ITEMS_PER_CALL,
    private readonly hooks: BatchHooks = {},
    private readonly replicaWait: ReplicaWait | undefined = undefined,
  ) {}

  submit(bucket: number, item: Item): Promise<Answer> {
    return new Promise<Answer>((resolve, reject) => {
      if (this.#byBucket.size === 0) setImmediate(this.#flush)
      const list = this.#byBucket.get(bucket)
      if (!list) {
        this.#byBucket.set(bucket, [{ item, resolve, reject }])
        return
      }
      list.push({ item, resolve, reject })
      if (list.length >= this.maxPerCall) {
        this.#byBucket.delete(bucket)
        const call = this.#callOrReject(bucket, list)
        if (call) void this.#send([call], true)
      }
    })
  }

  readonly #flush = (): void => {
    const byBucket = this.#byBucket
    if (byBucket.size === 0) return
    this.#byBucket = new Map()
    const calls: Call<Item, Answer>[] = []
    for (const [bucket, queued] of byBucket) {
      const call = this.#callOrReject(bucket, queued)
      if (call) calls.push(call)
    }
    if (calls.length > 0) void this.#send(calls, true)
  }

  /** The call for these items; if it cannot be built, they all fail instead of hanging. */
  #callOrReject(bucket: number, queued: Queued<Item, Answer>[]): Call<Item, Answer> | undefined {
    try {
      return { queued, ...this.codec.encode(bucket, queued.map((q) => q.item)) }
    } catch (err) {
      rejectAll(queued, err)
      return undefined
    }
  }

  async #send(calls: Call<Item, Answer>[], loadOnMissing: boolean): Promise<void> {
    const { script } = this.codec
    const { hooks } = this
    if (hooks.batch) for (const call of calls) hooks.batch(call.queued.length)
    let replies: [Error | null, unknown][]
    try {
      if (calls.length === 1) {
        const call = calls[0] as Call<Item, Answer>
        replies = [await this.redis.evalsha(script.sha, call.numKeys, ...call.keysThenArgs).then(
          (reply): [null, unknown] => [null, reply],
          (err: Error): [Error, null] => [err, null],
        )]
      } else {
        replies = await execBatch(this.redis, (pipeline) => {
          for (const call of calls) script.queue(pipeline, call.numKeys, call.keysThenArgs)
        })
      }
    } catch (err) {
      if (isCommandTimeout(err)) hooks.commandTimeout?.()
      for (const call of calls) rejectAll(call.queued, classify(err))
      return
    }
    const unreplicated = await this.#unreplicated(calls, replies)
    const missing: Call<Item, Answer>[] = []
    calls.forEach((call, i) => {
      const [err, reply] = replies[i] ?? [new Error('no reply from redis'), null]
      if (err && isNoScript(err)) {
        // Loaded just now and missing again (a failover to a node without it): not now, not a bug.
        if (loadOnMissing) missing.push(call)
        else rejectAll(call.queued, new CounterUnavailableError(`redis unavailable: ${err.message}`, { cause: err }))
      } else if (err) {
        if (isCommandTimeout(err)) hooks.commandTimeout?.()
        rejectAll(call.queued, classify(err))
      } else if (unreplicated.has(call)) {
        rejectAll(call.queued, new CounterUnavailableError('redis: the decision did not reach a replica in time'))
      } else {
        this.#settle(call, reply)
      }
    })
    if (missing.length === 0) return
    // The script cache was emptied: load the script once and send those calls again (a NOSCRIPT
    // call ran nothing, so sending it again cannot count twice).
    try {
      await script.load(this.redis)
    } catch (err) {
      for (const call of missing) rejectAll(call.queued, classify(err))
      return
    }
    await this.#send(missing, false)
  }

  /**
   * With a ReplicaWait: the calls (that ran) whose connection's writes did not reach the replicas
   * in time. One WAIT per connection: calls of one node share it.
   */
  async #unreplicated(calls: Call<Item, Answer>[], replies: [Error | null, unknown][]): Promise<Set<Call<Item, Answer>>> {
    const wait = this.replicaWait
    const failed = new Set<Call<Item, Answer>>()
    if (wait === undefined || wait.replicas <= 0) return failed
    // Calls by the connection that ran them (the master of their bucket's slot): one WAIT each.
    const byConnection = new Map<Redis, Call<Item, Answer>[]>()
    calls.forEach((call, i) => {
      if (replies[i]?.[0]) return
      const connection = connectionFor(this.redis, String(call.keysThenArgs[0]))
      if (connection === undefined) {
        failed.add(call)
        return
      }
      const group = byConnection.get(connection)
      if (group) group.push(call)
      else byConnection.set(connection, [call])
    })
    await Promise.all([...byConnection].map(async ([connection, group]) => {
      const acknowledged = await connection.wait(wait.replicas, wait.timeoutMs).catch(() => 0)
      if (acknowledged < wait.replicas) for (const call of group) failed.add(call)
    }))
    return failed
  }

  #settle(call: Call<Item, Answer>, reply: unknown): void {
    let answers: Answer[]
    try {
      answers = this.codec.decode(reply, call.queued.map((q) => q.item))
    } catch (err) {
      rejectAll(call.queued, err) // the items must not hang
      return
    }
    call.queued.forEach((q, i) => {
      if (i < answers.length) q.resolve(answers[i] as Answer)
      else q.reject(new Error(`${this.codec.script.name}.lua returned fewer answers than items`))
    })
  }
}

function rejectAll<Item, Answer>(queued: Queued<Item, Answer>[], err: unknown): void {
  const error = err instanceof Error ? err : new Error(String(err))
  for (const q of queued) q.reject(error)
}

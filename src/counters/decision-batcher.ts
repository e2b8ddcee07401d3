/**
 * Micro-batching of decisions. The decisions made during one event-loop turn are sent when it
 * ends (setImmediate), or as soon as one bucket has MAX_DECISIONS_PER_CALL of them: one
 * decide.lua call per bucket, deciding that bucket's decisions in order, and the calls of the
 * turn's end in one pipeline. Under load that is one socket write and one Redis read for
 * dozens of decisions instead of one each, and one script run per bucket instead of one per
 * decision; alone, a decision waits only for the turn it was made in to finish. Each decision is
 * still atomic on its own, and every key a call touches shares its bucket's hash tag.
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { Redis } from 'ioredis'
import { CounterUnavailableError, classify } from './errors.ts'
import type { KeySpace } from './keys.ts'
import type { ApplyItem, ApplyResult } from './redis-store.ts'

const DECIDE_LUA = readFileSync(new URL('./scripts/decide.lua', import.meta.url), 'utf8')
const DECIDE_SHA = createHash('sha1').update(DECIDE_LUA).digest('hex')

/**
 * Most decisions one script call takes; a call that is full goes out at once instead of at the end
 * of the turn. Redis runs nothing else while a script runs, so a burst for one bucket is cut into
 * short calls that other clients' commands slip between, and Redis starts deciding while this
 * process is still making decisions. Measured with 1000 in flight in one process (library bench):
 * 16 gave 0.85-1.1x rate-limiter-flexible's decisions/s, 100 gave 0.55-0.7x (Node and Redis took
 * turns instead of overlapping), 8 and 32 were no better than 16.
 */
export const MAX_DECISIONS_PER_CALL = 16

/** A decision as the store prepared it (see decide.lua's header for its arguments). */
export interface Decision {
  bucket: number
  /** Day hash, gauge, and the idempotency key when there is one. */
  keys: string[]
  /** decide.lua's JSON items after the first two (number of keys, deadline), without brackets. */
  words: string
  /** Context and fingerprint, sent only with an idempotency key. */
  idempotent: [context: string, fingerprint: string] | undefined
  items: ApplyItem[]
  /** Context of a fresh answer (a replay brings its own). */
  context: string
  /**
   * Redis-server time after which the script must not apply it; read when its call is built (a
   * NOSCRIPT resend keeps that deadline: stricter, never later).
   */
  deadline: (() => number) | undefined
}

/** lost: Redis lost this user's state (seed from Postgres, then retry); late: its deadline passed. */
export type DecisionOutcome = ApplyResult | 'lost' | 'late'

interface Queued {
  decision: Decision
  resolve: (outcome: DecisionOutcome) => void
  reject: (err: Error) => void
}

interface Call {
  queued: Queued[]
  argv: [sha: string, numKeys: number, ...args: (string | number)[]]
}

export class DecisionBatcher {
  /** Decisions waiting for the end of this turn, by bucket. */
  #byBucket = new Map<number, Queued[]>()

  constructor(
    private readonly redis: Redis,
    private readonly keys: KeySpace,
  ) {}

  decide(decision: Decision): Promise<DecisionOutcome> {
    return new Promise<DecisionOutcome>((resolve, reject) => {
      if (this.#byBucket.size === 0) setImmediate(this.#flush)
      const list = this.#byBucket.get(decision.bucket)
      if (!list) {
        this.#byBucket.set(decision.bucket, [{ decision, resolve, reject }])
        return
      }
      list.push({ decision, resolve, reject })
      // A full call goes out at once: Redis starts on it while this turn is still making decisions
      // (a process with many in flight would otherwise alternate: all Node, then all Redis).
      if (list.length >= MAX_DECISIONS_PER_CALL) {
        this.#byBucket.delete(decision.bucket)
        const call = this.#callOrReject(decision.bucket, list)
        if (call) void this.#send([call], true)
      }
    })
  }

  readonly #flush = (): void => {
    const byBucket = this.#byBucket
    if (byBucket.size === 0) return
    this.#byBucket = new Map()
    const calls: Call[] = []
    for (const [bucket, queued] of byBucket) {
      const call = this.#callOrReject(bucket, queued)
      if (call) calls.push(call)
    }
    if (calls.length > 0) void this.#send(calls, true)
  }

  /** The call for these decisions; if it cannot be built, they all fail instead of hanging. */
  #callOrReject(bucket: number, queued: Queued[]): Call | undefined {
    try {
      return this.#call(bucket, queued)
    } catch (err) {
      rejectAll(queued, err)
      return undefined
    }
  }

  #call(bucket: number, queued: Queued[]): Call {
    let numKeys = 2
    for (const q of queued) numKeys += q.decision.keys.length
    const argv: Call['argv'] = [DECIDE_SHA, numKeys, this.keys.dirty(bucket), this.keys.epoch(bucket)]
    for (const q of queued) for (const key of q.decision.keys) argv.push(key)
    argv.push(queued.length)
    for (const { decision } of queued) {
      argv.push(`[${decision.keys.length},${decision.deadline ? decision.deadline() : 0},${decision.words}]`)
      if (decision.idempotent) argv.push(decision.idempotent[0], decision.idempotent[1])
    }
    return { queued, argv }
  }

  async #send(calls: Call[], loadOnMissing: boolean): Promise<void> {
    let replies: [Error | null, unknown][]
    try {
      if (calls.length === 1) {
        const call = calls[0] as Call
        replies = [await this.redis.evalsha(...call.argv).then(
          (reply): [null, unknown] => [null, reply],
          (err: Error): [Error, null] => [err, null],
        )]
      } else {
        const pipeline = this.redis.pipeline()
        for (const call of calls) pipeline.evalsha(...call.argv)
        replies = ((await pipeline.exec()) ?? []) as [Error | null, unknown][]
      }
    } catch (err) {
      for (const call of calls) rejectAll(call.queued, classify(err))
      return
    }
    const missing: Call[] = []
    calls.forEach((call, i) => {
      const [err, reply] = replies[i] ?? [new Error('no reply from redis'), null]
      if (err && err.message.startsWith('NOSCRIPT')) {
        // Loaded just now and missing again (a failover to a node without it): not now, not a bug.
        if (loadOnMissing) missing.push(call)
        else rejectAll(call.queued, new CounterUnavailableError(`redis unavailable: ${err.message}`, { cause: err }))
      } else if (err) {
        rejectAll(call.queued, classify(err))
      } else {
        try {
          settle(call.queued, reply as (number | string)[])
        } catch (settleErr) {
          rejectAll(call.queued, settleErr) // settled decisions ignore it; the rest must not hang
        }
      }
    })
    if (missing.length === 0) return
    // Redis restarted or SCRIPT FLUSH ran: load the script once and send those calls again (a
    // NOSCRIPT call ran nothing, so sending it again cannot count twice).
    try {
      await this.redis.script('LOAD', DECIDE_LUA)
    } catch (err) {
      for (const call of missing) rejectAll(call.queued, classify(err))
      return
    }
    await this.#send(missing, false)
  }
}

function rejectAll(queued: Queued[], err: unknown): void {
  const error = err instanceof Error ? err : new Error(String(err))
  for (const q of queued) q.reject(error)
}

/** Hands each decision its part of one call's flat answer (layout: decide.lua's header). */
function settle(queued: Queued[], flat: (number | string)[]): void {
  let at = 0
  for (const q of queued) {
    const n = q.decision.items.length
    const status = flat[at]
    if (typeof status !== 'number') {
      q.reject(new Error('decide.lua returned fewer answers than decisions'))
      continue
    }
    if (status === 2 || status === 3) {
      q.resolve(status === 2 ? 'lost' : 'late')
      at += 2
      continue
    }
    const replayed = status >= 10
    const base = replayed ? status - 10 : status
    const current: number[] = []
    const limits: (number | null)[] = []
    if (base === 0 || base === 1) {
      for (let i = 0; i < n; i++) {
        current.push(flat[at + 2 + i] as number)
        // A fresh answer decided with the limits the caller sent; a replay, with the first call's.
        const limit = replayed ? (flat[at + 2 + n + i] as number) : ((q.decision.items[i] as ApplyItem).limit ?? -1)
        limits.push(limit < 0 ? null : limit)
      }
    }
    q.resolve({
      outcome: base === 1 ? 'allowed' : base === 4 ? 'conflict' : 'denied',
      replayed,
      deniedIndex: (flat[at + 1] as number) - 1,
      context: replayed ? String(flat[at + 2 + 2 * n]) : q.decision.context,
      current,
      limits,
    })
    at += replayed ? 3 + 2 * n : base === 4 ? 2 : 2 + n
  }
}

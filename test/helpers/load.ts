/**
 * Load against a running service process over HTTP, for the persistence fault tests: a few
 * concurrent loops of `POST /api/usage/consume` (or `/api/deploy`), each answer recorded, so a
 * test can compare what the service admitted (200/201) with what reached `daily_usage`.
 *
 * Every loop is bounded (request count and per-request timeout) and keeps going through errors:
 * a refused connection (service down, restarting, closing) is an "unknown" outcome only when the
 * request may have reached the service (sent but no answer); a refused connect is "refused".
 */
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { signToken } from './tokens.ts'

export interface LoadUser {
  id: string
  /** Bearer header value. */
  authorization: string
}

/** `n` new user ids with tokens signed with `secret`, inserted into `users` with `tier`. */
export async function createUsers(pool: pg.Pool, secret: string, n: number, tier = 'enterprise'): Promise<LoadUser[]> {
  const ids = Array.from({ length: n }, () => randomUUID())
  await pool.query(
    'INSERT INTO users (id, username, tier) SELECT u, u::text, $2 FROM unnest($1::uuid[]) AS u',
    [ids, tier],
  )
  return ids.map((id) => ({ id, authorization: `Bearer ${signToken({ sub: id, secret, expiresIn: '2h' })}` }))
}

export interface LoadOptions {
  /** Base URLs (round robin per request: several replicas). */
  baseUrls: string[]
  users: LoadUser[]
  /** Concurrent loops. @default 4 */
  concurrency?: number
  /** `consume` = POST /api/usage/consume {api_calls: 1}; `deploy` = POST /api/deploy. @default 'consume' */
  route?: 'consume' | 'deploy'
  /** Hard bound on requests over all loops. @default 50000 */
  maxRequests?: number
  /** Per-request timeout. @default 5000 */
  requestTimeoutMs?: number
}

export interface LoadStats {
  /** Requests answered 200/201, per user. */
  admittedByUser: Map<string, number>
  admitted: number
  /** Answers per HTTP status. */
  statuses: Map<number, number>
  /** Connections refused / reset before a request could be read: nothing counted. */
  refused: number
  /** Sent, but no answer (connection dropped mid-request, timeout): may or may not have counted. */
  unknown: number
  /** Every request attempted. */
  requests: number
  /** The first few non-2xx answers, for diagnostics. */
  samples: string[]
}

export interface Load {
  readonly stats: LoadStats
  /** Stops the loops and waits for the requests in flight. */
  stop(): Promise<LoadStats>
  /** Resolves once `n` requests were admitted (bounded by `timeoutMs`). */
  waitForAdmitted(n: number, timeoutMs: number): Promise<void>
}

const REFUSED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH'])

function errorCode(err: unknown): string {
  const cause = (err as { cause?: { code?: string; name?: string } }).cause
  return cause?.code ?? cause?.name ?? (err as Error).name
}

export function startLoad(options: LoadOptions): Load {
  const concurrency = options.concurrency ?? 4
  const maxRequests = options.maxRequests ?? 50_000
  const timeoutMs = options.requestTimeoutMs ?? 5000
  const route = options.route ?? 'consume'
  const path = route === 'consume' ? '/api/usage/consume' : '/api/deploy'
  const body = route === 'consume' ? JSON.stringify({ metric: 'api_calls', amount: 1 }) : undefined
  const stats: LoadStats = {
    admittedByUser: new Map(), admitted: 0, statuses: new Map(), refused: 0, unknown: 0, requests: 0, samples: [],
  }
  let stopped = false
  let next = 0

  const loop = async (): Promise<void> => {
    while (!stopped && stats.requests < maxRequests) {
      const i = next++
      const user = options.users[i % options.users.length] as LoadUser
      const base = options.baseUrls[i % options.baseUrls.length] as string
      stats.requests++
      try {
        const res = await fetch(`${base}${path}`, {
          method: 'POST',
          headers: { authorization: user.authorization, ...(body ? { 'content-type': 'application/json' } : {}) },
          body,
          signal: AbortSignal.timeout(timeoutMs),
        })
        const text = await res.text()
        stats.statuses.set(res.status, (stats.statuses.get(res.status) ?? 0) + 1)
        if (res.status === 200 || res.status === 201) {
          stats.admitted++
          stats.admittedByUser.set(user.id, (stats.admittedByUser.get(user.id) ?? 0) + 1)
        } else {
          if (stats.samples.length < 5) stats.samples.push(`${res.status} ${text.slice(0, 200)}`)
          await sleep(5)
        }
      } catch (err) {
        if (REFUSED.has(errorCode(err))) stats.refused++
        else stats.unknown++
        // The service is down or closing: do not spin.
        await sleep(20)
      }
    }
  }
  const loops = Array.from({ length: concurrency }, () => loop())
  const done = Promise.all(loops).then(() => stats)

  return {
    stats,
    async stop() {
      stopped = true
      return done
    },
    async waitForAdmitted(n, waitMs) {
      const deadline = Date.now() + waitMs
      while (stats.admitted < n) {
        if (Date.now() > deadline) throw new Error(`only ${stats.admitted} of ${n} requests admitted after ${waitMs} ms`)
        await sleep(20)
      }
    },
  }
}

/** Per user: sum over all days of `api_calls` and `deployments_created` in daily_usage. */
export async function usageTotals(pool: pg.Pool, userIds: string[]): Promise<Map<string, { api: number; dep: number }>> {
  const { rows } = await pool.query<{ user_id: string; api: number; dep: number }>(
    `SELECT user_id::text, sum(api_calls)::int AS api, sum(deployments_created)::int AS dep
       FROM daily_usage WHERE user_id = ANY($1::uuid[]) GROUP BY user_id`,
    [userIds],
  )
  return new Map(rows.map((r) => [r.user_id, { api: r.api, dep: r.dep }]))
}

/** Sum of `api_calls` over the users, all days. */
export async function totalApiCalls(pool: pg.Pool, userIds: string[]): Promise<number> {
  let sum = 0
  for (const v of (await usageTotals(pool, userIds)).values()) sum += v.api
  return sum
}

/** Per-user admitted counts as a plain object (for t.same diffs that name the user). */
export function byUser(users: LoadUser[], counts: (id: string) => number): Record<string, number> {
  return Object.fromEntries(users.map((u) => [u.id, counts(u.id)]))
}

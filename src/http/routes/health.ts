/**
 * Liveness and readiness. `/ready` probes the service's OWN Redis client and
 * Postgres pool — the connections decisions and flushes use — so a load balancer stops sending
 * traffic to a replica whose connections are broken even when the servers themselves are up.
 */
import type { FastifyInstance } from 'fastify'
import { Type } from 'typebox'
import type { Pool } from '../../db/client.ts'
import { errorBody } from '../errors.ts'

export interface HealthRoutesOptions {
  /** The deployment mode, named by /ready. @default 'redis' */
  mode?: 'redis' | 'cluster' | 'embedded'
  /** Probes the counter store's own connection (rejects when it cannot decide now). */
  pingCounters: () => Promise<unknown>
  pool: Pool
  /** Longest wait for each probe before it counts as down. @default 1000 */
  probeTimeoutMs?: number
}

type CheckState = 'ok' | 'down'

/** Resolves 'ok' when `probe` answers within `ms`, else 'down' (never rejects). */
async function check(probe: () => Promise<unknown>, ms: number): Promise<{ state: CheckState; reason?: string }> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
  })
  try {
    await Promise.race([probe(), timeout])
    return { state: 'ok' }
  } catch (err) {
    return { state: 'down', reason: (err as Error).message }
  } finally {
    clearTimeout(timer)
  }
}

const HealthReply = Type.Object({ status: Type.Literal('ok') })
const State = Type.Union([Type.Literal('ok'), Type.Literal('down')])
// The counters' check is named where they live: `redis`, or `memory` in embedded mode (no Redis).
const Checks = <T extends typeof State | ReturnType<typeof Type.Literal<'ok'>>>(state: T) =>
  Type.Object({ redis: Type.Optional(state), memory: Type.Optional(state), postgres: state })
const ReadyReply = Type.Object({
  status: Type.Literal('ready'),
  mode: Type.Union([Type.Literal('redis'), Type.Literal('cluster'), Type.Literal('embedded')]),
  checks: Checks(Type.Literal('ok')),
})
const NotReadyReply = Type.Object({
  detail: Type.Object({
    error: Type.String(),
    message: Type.String(),
    checks: Checks(State),
  }),
})

export default async function healthRoutes(app: FastifyInstance, options: HealthRoutesOptions): Promise<void> {
  const { pingCounters, pool } = options
  const mode = options.mode ?? 'redis'
  const counters = mode === 'embedded' ? 'memory' : 'redis'
  const ms = options.probeTimeoutMs ?? 1000

  app.get('/health', { schema: { response: { 200: HealthReply } } }, async () => ({ status: 'ok' as const }))

  app.get('/ready', { schema: { response: { 200: ReadyReply, 503: NotReadyReply } } }, async (request, reply) => {
    const [r, p] = await Promise.all([
      check(pingCounters, ms),
      // A query on the pool, not a new connection: proves the pool itself can still reach Postgres.
      check(() => pool.query('SELECT 1'), ms),
    ])
    const checks = { [counters]: r.state, postgres: p.state }
    if (r.state === 'ok' && p.state === 'ok') {
      return { status: 'ready' as const, mode, checks: { [counters]: 'ok' as const, postgres: 'ok' as const } }
    }
    const down = [r.state === 'down' && counters, p.state === 'down' && 'postgres'].filter(Boolean)
    request.log.warn({ checks, [counters]: r.reason, postgres: p.reason }, 'not ready')
    return reply
      .code(503)
      .header('Retry-After', '1')
      .send(errorBody('Service not ready', `${down.join(' and ')} ${down.length > 1 ? 'are' : 'is'} down`, { checks }))
  })
}

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
const ReadyReply = Type.Object({
  status: Type.Literal('ready'),
  checks: Type.Object({ redis: Type.Literal('ok'), postgres: Type.Literal('ok') }),
})
const State = Type.Union([Type.Literal('ok'), Type.Literal('down')])
const NotReadyReply = Type.Object({
  detail: Type.Object({
    error: Type.String(),
    message: Type.String(),
    checks: Type.Object({ redis: State, postgres: State }),
  }),
})

export default async function healthRoutes(app: FastifyInstance, options: HealthRoutesOptions): Promise<void> {
  const { pingCounters, pool } = options
  const ms = options.probeTimeoutMs ?? 1000

  app.get('/health', { schema: { response: { 200: HealthReply } } }, async () => ({ status: 'ok' as const }))

  app.get('/ready', { schema: { response: { 200: ReadyReply, 503: NotReadyReply } } }, async (request, reply) => {
    const [r, p] = await Promise.all([
      check(pingCounters, ms),
      // A query on the pool, not a new connection: proves the pool itself can still reach Postgres.
      check(() => pool.query('SELECT 1'), ms),
    ])
    const checks = { redis: r.state, postgres: p.state }
    if (r.state === 'ok' && p.state === 'ok') return { status: 'ready' as const, checks: { redis: 'ok' as const, postgres: 'ok' as const } }
    const down = [r.state === 'down' && 'redis', p.state === 'down' && 'postgres'].filter(Boolean)
    request.log.warn({ checks, redis: r.reason, postgres: p.reason }, 'not ready')
    return reply
      .code(503)
      .header('Retry-After', '1')
      .send(errorBody('Service not ready', `${down.join(' and ')} ${down.length > 1 ? 'are' : 'is'} down`, { checks }))
  })
}

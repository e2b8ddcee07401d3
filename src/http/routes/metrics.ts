/**
 * GET /metrics: the Prometheus text format of this app's own registry (http/metrics.ts). Open to
 * anyone, like the health checks: it carries no user id and no amount of any one user.
 */
import type { FastifyPluginAsync } from 'fastify'
import type { Registry } from 'prom-client'

export interface MetricsRouteOptions {
  registry: Registry
}

const metricsRoute: FastifyPluginAsync<MetricsRouteOptions> = async (app, { registry }) => {
  app.get('/metrics', {
    schema: {
      tags: ['operations'],
      summary: 'Prometheus metrics (text exposition format)',
      description: 'quota_decisions_total{metric,outcome}, quota_decision_duration_seconds, quota_flush_rows_total, quota_flush_lag_seconds, quota_dirty_user_days, quota_fail_open_total, quota_leader, deny-cache hits, batch sizes, Redis timeouts, HTTP requests and the process metrics.',
      produces: ['text/plain'],
      // Not part of the JSON API the document describes (text format, no envelope).
      hide: true,
    },
  }, async (_request, reply) => {
    const body = await registry.metrics()
    return reply.type(registry.contentType).send(body)
  })
}

export default metricsRoute

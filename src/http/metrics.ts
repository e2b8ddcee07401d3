/**
 * The Prometheus side of the telemetry seam: one prom-client Registry per app (tests build many
 * apps in one process, so never the global default registry), the engine's Telemetry written
 * into it, the process's default metrics, and HTTP request metrics by route pattern.
 *
 * Cost on the hot path: every label child of quota_decisions_total is bound once, here, for each
 * metric x outcome, so a decision is a Map lookup and an increment per metric plus one histogram
 * observation. Gauges that need I/O (flush lag, dirty user-days) are read only when Prometheus
 * scrapes, each bounded by SCRAPE_IO_TIMEOUT_MS. No label ever holds a user id.
 */
import type { FastifyInstance } from 'fastify'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { DecisionOutcome, QuotaEngine, Telemetry } from '../engine.ts'
import { METRIC_NAMES } from '../metrics.ts'

/** Longest a scrape waits for Redis to answer the flush-lag and dirty-count reads. */
export const SCRAPE_IO_TIMEOUT_MS = 500

const OUTCOMES: readonly DecisionOutcome[] = ['allowed', 'denied', 'error']

/** Decision latency buckets: a decision is ~0.1-2 ms in steady state; the command timeout is 250 ms. */
const DECISION_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]
const HTTP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
/** Batch sizes up to MAX_ITEMS_PER_CALL (16). */
const BATCH_BUCKETS = [1, 2, 4, 8, 12, 16]

/** Resolves with `fallback` if `work` takes longer than `ms` (a scrape must not hang on Redis). */
async function within<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([work, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export interface QuotaMetrics {
  readonly registry: Registry
  /** Hand this to createQuotaEngine({ telemetry }). */
  readonly telemetry: Telemetry
  /** Gives the scrape-time gauges (flush lag, dirty user-days, leader) their engine. */
  bindEngine(engine: QuotaEngine): void
  /** Counts and times every HTTP request, labelled by method, route pattern and status. */
  instrument(app: FastifyInstance): void
}

export interface QuotaMetricsOptions {
  /** Also collect prom-client's process metrics (CPU, memory, event loop, GC). @default true */
  processMetrics?: boolean
}

export function createQuotaMetrics(options: QuotaMetricsOptions = {}): QuotaMetrics {
  const registry = new Registry()
  if (options.processMetrics !== false) collectDefaultMetrics({ register: registry })
  let engine: QuotaEngine | undefined

  const decisions = new Counter({
    name: 'quota_decisions_total',
    help: 'Usage decisions by metric and outcome (allowed, denied: any refusal, error: the counter store did not answer). A multi-metric consume counts once per metric.',
    labelNames: ['metric', 'outcome'] as const,
    registers: [registry],
  })
  const duration = new Histogram({
    name: 'quota_decision_duration_seconds',
    help: 'Duration of the counter-store call of one decision (deny-cache answers make none).',
    buckets: DECISION_BUCKETS,
    registers: [registry],
  })
  const failOpen = new Counter({
    name: 'quota_fail_open_total',
    help: 'Decisions admitted without the counter store (USAGE_FAIL_MODE=open).',
    registers: [registry],
  })
  const denyCacheHits = new Counter({
    name: 'quota_deny_cache_hits_total',
    help: 'Repeated denials answered from the in-process deny cache, without Redis.',
    labelNames: ['metric'] as const,
    registers: [registry],
  })
  const batchSize = new Histogram({
    name: 'quota_batch_size',
    help: 'Decisions carried by one decide.lua call.',
    buckets: BATCH_BUCKETS,
    registers: [registry],
  })
  const timeouts = new Counter({
    name: 'quota_redis_command_timeouts_total',
    help: 'Redis commands whose timeout ran out, and decisions whose deadline passed before Redis ran them.',
    registers: [registry],
  })
  const flushRows = new Counter({
    name: 'quota_flush_rows_total',
    help: 'Rows the flusher wrote to daily_usage.',
    registers: [registry],
  })
  const events = new Counter({
    name: 'quota_events_total',
    help: 'Threshold events recorded in usage_events, by threshold (percent of the limit).',
    labelNames: ['threshold'] as const,
    registers: [registry],
  })
  const deliveries = new Counter({
    name: 'quota_webhook_deliveries_total',
    help: 'Webhook delivery attempts of threshold events: delivered (2xx), failed (retried later), gave_up (retry period over).',
    labelNames: ['outcome'] as const,
    registers: [registry],
  })
  for (const threshold of ['80', '100']) events.inc({ threshold }, 0)
  for (const outcome of ['delivered', 'failed', 'gave_up']) deliveries.inc({ outcome }, 0)
  new Gauge({
    name: 'quota_flush_lag_seconds',
    help: 'Age of the oldest change not yet in daily_usage (0 when nothing is pending). Absent when Redis does not answer in time.',
    registers: [registry],
    async collect() {
      if (!engine) return
      const lagMs = await within(engine.flusher.lagMs(), SCRAPE_IO_TIMEOUT_MS).catch(() => undefined)
      if (lagMs === undefined) this.reset()
      else this.set(lagMs / 1000)
    },
  })
  new Gauge({
    name: 'quota_dirty_user_days',
    help: 'User-days changed in Redis and not yet flushed to daily_usage. Absent when Redis does not answer in time.',
    registers: [registry],
    async collect() {
      if (!engine) return
      const counts = await within(engine.store.dirtyCounts(), SCRAPE_IO_TIMEOUT_MS).catch(() => undefined)
      if (counts === undefined) this.reset()
      else this.set(counts.reduce((a, b) => a + b, 0))
    },
  })
  new Gauge({
    name: 'quota_leader',
    help: '1 on the replica holding the leader lock (it runs the scheduled jobs), else 0.',
    registers: [registry],
    collect() {
      this.set(engine?.leader?.isLeader ? 1 : 0)
    },
  })

  // Pre-bound children: the hot path never builds a label set.
  const children = new Map<string, Record<DecisionOutcome, Counter.Internal>>()
  for (const metric of METRIC_NAMES) {
    // Zero from the start, so rate() and absent() see every series before its first increment.
    for (const outcome of OUTCOMES) decisions.inc({ metric, outcome }, 0)
    denyCacheHits.inc({ metric }, 0)
    children.set(metric, Object.fromEntries(OUTCOMES.map((o) => [o, decisions.labels(metric, o)])) as Record<DecisionOutcome, Counter.Internal>)
  }
  const denyChildren = new Map(METRIC_NAMES.map((m) => [m as string, denyCacheHits.labels(m)]))

  const telemetry: Telemetry = {
    decision(metrics, outcome, seconds) {
      for (const metric of metrics) children.get(metric)?.[outcome].inc()
      duration.observe(seconds)
    },
    failOpen() {
      failOpen.inc()
    },
    denyCacheHit(metric) {
      denyChildren.get(metric)?.inc()
      children.get(metric)?.denied.inc()
    },
    batch(size) {
      batchSize.observe(size)
    },
    commandTimeout() {
      timeouts.inc()
    },
    flushRows(rows) {
      if (rows > 0) flushRows.inc(rows)
    },
    thresholdEvents(threshold, count) {
      events.inc({ threshold: String(threshold) }, count)
    },
    webhookDelivery(outcome) {
      deliveries.inc({ outcome })
    },
  }

  const httpRequests = new Counter({
    name: 'quota_http_requests_total',
    help: 'HTTP requests answered, by method, route pattern (never the raw URL) and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  })
  const httpDuration = new Histogram({
    name: 'quota_http_request_duration_seconds',
    help: 'Time from the request to the end of its answer, by method, route pattern and status.',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: HTTP_BUCKETS,
    registers: [registry],
  })
  const instrument = (app: FastifyInstance): void => {
    const bound = new Map<string, { count: Counter.Internal; time: Histogram.Internal<'method' | 'route' | 'status'> }>()
    app.addHook('onResponse', (request, reply, done) => {
      // The pattern (/api/usage/admin/users/:id/status), never the URL: no user id, bounded cardinality.
      const route = request.routeOptions.url ?? '(unmatched)'
      const status = String(reply.statusCode)
      const key = `${request.method} ${route} ${status}`
      let pair = bound.get(key)
      if (!pair) {
        pair = { count: httpRequests.labels(request.method, route, status), time: httpDuration.labels(request.method, route, status) }
        bound.set(key, pair)
      }
      pair.count.inc()
      pair.time.observe(reply.elapsedTime / 1000)
      done()
    })
  }

  return {
    registry,
    telemetry,
    bindEngine(e) {
      engine = e
    },
    instrument,
  }
}

/**
 * The telemetry seam: what the hot path, the counter store and the flusher report (decisions and
 * their latency, fail-open admissions, deny-cache hits, batch sizes, command timeouts, rows
 * flushed, threshold events and their webhook deliveries), and a no-op implementation. The layers below http/ never import a metrics library:
 * each declares the few calls it makes (UsageTelemetry, StoreTelemetry, FlushTelemetry), which
 * this interface satisfies, and engine.ts hands the one implementation to all of them. The
 * Prometheus implementation lives in http/metrics.ts.
 *
 * Every call is synchronous and cheap (a counter increment): it runs on the decision path.
 * No call carries a user id.
 */

/** How a decision ended: admitted, refused (a limit, or any other refusal), or no answer (the store failed). */
export type DecisionOutcome = 'allowed' | 'denied' | 'error'

export interface Telemetry {
  /** One store decision of these metrics (a multi-metric consume is one decision of several), and its duration. */
  decision(metrics: readonly string[], outcome: DecisionOutcome, seconds: number): void
  /** A decision admitted without the store (USAGE_FAIL_MODE=open). */
  failOpen(): void
  /** A repeated denial answered from the in-process deny cache, without the store. */
  denyCacheHit(metric: string): void
  /** One script call of the batcher, carrying `size` decisions. */
  batch(size: number): void
  /** A Redis command or decision deadline ran out. */
  commandTimeout(): void
  /** Rows the flusher wrote to daily_usage. */
  flushRows(rows: number): void
  /** Threshold events recorded in usage_events (80 or 100 %). */
  thresholdEvents(threshold: 80 | 100, count: number): void
  /** One webhook delivery attempt of a threshold event and how it ended. */
  webhookDelivery(outcome: 'delivered' | 'failed' | 'gave_up'): void
}

/** The default: nothing recorded, nothing allocated. */
export const noTelemetry: Telemetry = Object.freeze({
  decision() {},
  failOpen() {},
  denyCacheHit() {},
  batch() {},
  commandTimeout() {},
  flushRows() {},
  thresholdEvents() {},
  webhookDelivery() {},
})

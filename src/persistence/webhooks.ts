/**
 * Webhook delivery of threshold events (docs/events.md): a timer of its own, never on the decision
 * path, that claims due events from usage_events and POSTs each to WEBHOOK_URL, signed:
 *
 *   Quota-Signature: t=<unix seconds of the attempt>,v1=<hex HMAC-SHA256 of "<t>.<body>" with WEBHOOK_SECRET>
 *
 * A 2xx answer is a delivery. Anything else — another status (redirects are not followed), a
 * network error, no answer within the timeout — is retried with exponential backoff and full
 * jitter (a random wait up to base x 2^(attempt-1), capped) until 24 h after the crossing, then
 * given up (gave_up_at, last_error, a warn log). Delivery is at least once: an attempt whose
 * outcome was not recorded (a crash mid-attempt) is made again after its lease, so receivers
 * dedupe on `id`. The state lives in Postgres, so retries survive restarts.
 *
 * Every replica runs a worker: a claim takes rows no other replica is claiming (SKIP LOCKED) and
 * leases them for the attempt, so each attempt is made by one replica. The worker's database
 * statements run one at a time (one pooled connection at most); its POSTs run side by side.
 */
import { createHmac } from 'node:crypto'
import type { Logger } from 'pino'
import { systemClock } from '../clock.ts'
import type { Clock } from '../clock.ts'
import type { Pool } from '../db/client.ts'
import { claimDueEvents, markDelivered, markFailed, markGaveUp } from '../db/usage-events.ts'
import type { ClaimedEvent } from '../db/usage-events.ts'

export type DeliveryOutcome = 'delivered' | 'failed' | 'gave_up'

/** The call the worker makes to the telemetry seam (the engine passes its Telemetry). */
export interface WebhookTelemetry {
  webhookDelivery(outcome: DeliveryOutcome): void
}

export interface WebhookOptions {
  pool: Pool
  /** WEBHOOK_URL. */
  url: string
  /** WEBHOOK_SECRET: the HMAC key. */
  secret: string
  /** Source of "now": due times, the retry period, the signature's `t`. @default the system clock */
  clock?: Clock
  logger?: Pick<Logger, 'info' | 'warn' | 'debug'> | undefined
  telemetry?: WebhookTelemetry | undefined
  /** How often due events are looked for, ms. @default 1000 */
  pollMs?: number
  /** Longest an attempt waits for the answer, ms. @default 10000 */
  timeoutMs?: number
  /** Events claimed (and POSTed side by side) at once. @default 4 */
  batch?: number
  /** Backoff of the first retry (the ceiling of its random wait), ms. @default 1000 */
  baseBackoffMs?: number
  /** Longest ceiling of a retry's wait, ms. @default 3600000 */
  maxBackoffMs?: number
  /** Retries stop this long after the crossing, ms. @default 86400000 */
  retryForMs?: number
  /** How long stop() lets attempts under way finish before cutting them short, ms. @default 2000 */
  stopGraceMs?: number
  /** A number in [0, 1) (the jitter). @default Math.random */
  random?: () => number
  /** @default globalThis.fetch */
  fetch?: typeof fetch
}

/** `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the Quota-Signature header. */
export function signWebhook(secret: string, t: number, body: string): string {
  return `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')}`
}

/** The JSON body POSTed for an event (amounts as JSON numbers, exact: at most 6 decimals). */
export function webhookBody(event: Omit<ClaimedEvent, 'attempts'>): string {
  return JSON.stringify({
    id: event.id,
    type: 'usage.threshold',
    user_id: event.user_id,
    metric: event.metric,
    date: event.date,
    threshold: event.threshold,
    current: Number(event.current),
    limit: Number(event.limit),
    created_at: event.created_at,
  })
}

/** The wait before retry `attempt` (1 = the first retry): uniform in [0, min(max, base x 2^(attempt-1))). */
export function retryDelayMs(attempt: number, baseMs: number, maxMs: number, random: () => number): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(0, attempt - 1), 40))
  return Math.floor(random() * ceiling)
}

/** A failure's text for last_error (bounded). */
function describe(err: unknown): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } }
  if (e?.name === 'TimeoutError') return 'no answer within the timeout'
  const cause = e?.cause?.code ?? e?.cause?.message
  return `${e?.message ?? String(err)}${cause ? ` (${cause})` : ''}`.slice(0, 500)
}

export class WebhookDelivery {
  readonly #o: Required<Omit<WebhookOptions, 'logger' | 'telemetry'>> & Pick<WebhookOptions, 'logger' | 'telemetry'>
  #timer: NodeJS.Timeout | undefined
  #stopped = true
  /** The round under way (claims, attempts and their records). */
  #round: Promise<number> = Promise.resolve(0)
  /** The worker's database statements, one after another. */
  #dbTail: Promise<unknown> = Promise.resolve()
  /** Cuts attempts under way short at stop. */
  #abort = new AbortController()
  /** Attempts failed in a row (for one warn when the receiver starts failing, one info when it recovers). */
  #failing = 0

  constructor(options: WebhookOptions) {
    this.#o = {
      clock: systemClock, pollMs: 1000, timeoutMs: 10_000, batch: 4, baseBackoffMs: 1000, maxBackoffMs: 3_600_000,
      retryForMs: 86_400_000, stopGraceMs: 2000, random: Math.random, fetch: globalThis.fetch, ...options,
    }
  }

  start(): void {
    if (!this.#stopped) return
    this.#stopped = false
    this.#abort = new AbortController()
    this.#schedule(0)
  }

  /** Stops the timer and waits for the round under way: its attempts get stopGraceMs, then are cut short (and retried later). */
  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#timer) clearTimeout(this.#timer)
    let grace: NodeJS.Timeout | undefined
    const cut = new Promise<void>((resolve) => {
      grace = setTimeout(() => {
        this.#abort.abort(new Error('shutting down'))
        resolve()
      }, this.#o.stopGraceMs)
    })
    await Promise.race([this.#round.catch(() => 0), cut])
    clearTimeout(grace)
    await this.#round.catch(() => 0)
  }

  /** One round: claims the events due now and makes one attempt at each. Returns how many were attempted. */
  deliverDue(): Promise<number> {
    const run = this.#round.catch(() => 0).then(() => this.#deliver())
    this.#round = run
    return run
  }

  async #deliver(): Promise<number> {
    const { pool, clock, batch, timeoutMs } = this.#o
    // The lease covers the attempts (side by side) and their records: no other replica re-tries meanwhile.
    const claimed = await this.#db(() => claimDueEvents(pool, clock.now(), timeoutMs + 60_000, batch))
    await Promise.all(claimed.map((event) => this.#attempt(event)))
    return claimed.length
  }

  #db<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#dbTail.catch(() => {}).then(fn)
    this.#dbTail = run
    return run
  }

  async #attempt(event: ClaimedEvent): Promise<void> {
    const { pool, clock, url, secret, timeoutMs, logger, telemetry } = this.#o
    const body = webhookBody(event)
    let error: string | undefined
    try {
      const t = Math.floor(clock.now() / 1000)
      const response = await this.#o.fetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'quota-webhooks',
          'quota-signature': signWebhook(secret, t, body),
        },
        body,
        redirect: 'manual',
        signal: AbortSignal.any([AbortSignal.timeout(timeoutMs), this.#abort.signal]),
      })
      await response.body?.cancel().catch(() => {})
      if (response.status < 200 || response.status > 299) error = `HTTP ${response.status}`
    } catch (err) {
      error = this.#abort.signal.aborted ? 'cut short: the service was stopping' : describe(err)
    }
    const now = clock.now()
    if (error === undefined) {
      await this.#db(() => markDelivered(pool, event.id, now))
      telemetry?.webhookDelivery('delivered')
      if (this.#failing > 0) logger?.info({ after: this.#failing }, 'webhook deliveries succeed again')
      this.#failing = 0
      return
    }
    if (this.#failing++ === 0) logger?.warn({ eventId: event.id, err: error }, 'webhook delivery failed; retrying with backoff')
    const deadline = Date.parse(event.created_at) + this.#o.retryForMs
    if (now >= deadline) {
      await this.#db(() => markGaveUp(pool, event.id, error, now))
      telemetry?.webhookDelivery('gave_up')
      logger?.warn({ eventId: event.id, attempts: event.attempts, err: error }, 'webhook delivery given up: no success within the retry period')
      return
    }
    const next = Math.min(deadline, now + retryDelayMs(event.attempts, this.#o.baseBackoffMs, this.#o.maxBackoffMs, this.#o.random))
    await this.#db(() => markFailed(pool, event.id, error, next))
    telemetry?.webhookDelivery('failed')
    logger?.debug({ eventId: event.id, attempts: event.attempts, err: error, nextAttemptAt: new Date(next).toISOString() }, 'webhook delivery failed')
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return
    this.#timer = setTimeout(() => void this.#tick(), delayMs)
    this.#timer.unref()
  }

  async #tick(): Promise<void> {
    let delay = this.#o.pollMs
    try {
      // A full batch: more may be due, look again at once.
      if ((await this.deliverDue()) >= this.#o.batch) delay = 0
    } catch (err) {
      this.#o.logger?.warn({ err: (err as Error).message }, 'webhook delivery round failed (database); retrying')
      delay = Math.min(30_000, this.#o.pollMs * 5)
    } finally {
      this.#schedule(delay)
    }
  }
}

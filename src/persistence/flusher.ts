/**
 * Redis -> daily_usage. Every FLUSH_INTERVAL_MS the flusher reads the user-days the counter
 * scripts marked dirty (no keyspace scan), writes their absolute totals to Postgres in batches,
 * and only then takes them off the dirty sets — unless they changed meanwhile. On any error the
 * marks stay and the next attempt comes after a backoff: nothing is dropped. Several replicas may
 * flush at once: rows are version-guarded (see upsertTotals).
 */
import type { Logger } from 'pino'
import type { Pool } from '../db/client.ts'
import { upsertTotals } from '../db/daily-usage.ts'
import type { DayTotals } from '../db/daily-usage.ts'
import type { DirtyEntry, RedisCounterStore } from '../counters/redis-store.ts'

export interface FlusherOptions {
  store: RedisCounterStore
  pool: Pool
  /** FLUSH_INTERVAL_MS. @default 1000 */
  intervalMs?: number
  /** Most user-days read per bucket per pass. @default 2000 */
  perBucket?: number
  /** Most rows per INSERT statement. @default 5000 */
  batchSize?: number
  /** Longest wait between attempts while failing. @default 30000 */
  maxBackoffMs?: number
  logger?: Pick<Logger, 'info' | 'warn' | 'error' | 'debug'>
}

export interface FlushStats {
  /** Rows written to daily_usage since start. */
  rowsWritten: number
  passes: number
  lastSuccessAt: number | null
  lastError: string | null
  consecutiveFailures: number
}

export interface PassResult {
  /** Dirty user-days read. */
  read: number
  /** Rows inserted or updated. */
  written: number
  /** Entries taken off the dirty sets. */
  acked: number
}

export class Flusher {
  readonly #o: Required<Omit<FlusherOptions, 'logger'>> & Pick<FlusherOptions, 'logger'>
  readonly stats: FlushStats = { rowsWritten: 0, passes: 0, lastSuccessAt: null, lastError: null, consecutiveFailures: 0 }
  #timer: NodeJS.Timeout | undefined
  #running = false
  #stopped = true
  /** Serialises passes within the process: a pass never overlaps another. */
  #current: Promise<unknown> = Promise.resolve()

  constructor(options: FlusherOptions) {
    this.#o = {
      intervalMs: 1000,
      perBucket: 2000,
      batchSize: 5000,
      maxBackoffMs: 30_000,
      ...options,
    }
  }

  start(): void {
    this.#stopped = false
    this.#schedule(this.#o.intervalMs)
  }

  /** Stops the loop and makes a last full flush (graceful shutdown). */
  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#timer) clearTimeout(this.#timer)
    await this.#current.catch(() => {})
    await this.flushAll()
  }

  /** One pass over every bucket. */
  async flushOnce(): Promise<PassResult> {
    const run = this.#current.catch(() => {}).then(() => this.#pass())
    this.#current = run
    return run
  }

  /** Passes until nothing is dirty (or no progress is made): after it, Postgres has everything. */
  async flushAll(maxPasses = 1000): Promise<PassResult> {
    const total: PassResult = { read: 0, written: 0, acked: 0 }
    for (let i = 0; i < maxPasses; i++) {
      const r = await this.flushOnce()
      total.read += r.read
      total.written += r.written
      total.acked += r.acked
      if (r.read === 0 || r.acked === 0) break
    }
    return total
  }

  /** Age (ms) of the oldest change not yet in Postgres; 0 when all is flushed. */
  async lagMs(now: number = Date.now()): Promise<number> {
    const oldest = await this.#o.store.oldestDirty()
    return oldest === null ? 0 : Math.max(0, now - oldest)
  }

  async #pass(): Promise<PassResult> {
    const entries = await this.#o.store.readDirty(this.#o.perBucket)
    if (entries.length === 0) return { read: 0, written: 0, acked: 0 }
    const rows: DayTotals[] = []
    for (const e of entries) {
      // A day hash that expired has nothing left to write; its mark is simply removed.
      if (e.values) rows.push({ userId: e.userId, day: e.day, d: e.values.d, a: e.values.a, c: e.values.c, s: e.values.s, version: e.values.v })
    }
    let written = 0
    for (let i = 0; i < rows.length; i += this.#o.batchSize) {
      written += await upsertTotals(this.#o.pool, rows.slice(i, i + this.#o.batchSize))
    }
    const acked = await this.#ack(entries)
    this.stats.rowsWritten += written
    this.stats.passes++
    return { read: entries.length, written, acked }
  }

  async #ack(entries: DirtyEntry[]): Promise<number> {
    const byBucket = new Map<number, { userId: string; day: string; version: number }[]>()
    for (const e of entries) {
      const list = byBucket.get(e.bucket) ?? []
      list.push({ userId: e.userId, day: e.day, version: e.values?.v ?? Number.MAX_SAFE_INTEGER })
      byBucket.set(e.bucket, list)
    }
    const counts = await Promise.all([...byBucket].map(([bucket, written]) => this.#o.store.ack(bucket, written)))
    return counts.reduce((a, b) => a + b, 0)
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return
    this.#timer = setTimeout(() => void this.#tick(), delayMs)
    this.#timer.unref()
  }

  async #tick(): Promise<void> {
    if (this.#running || this.#stopped) return
    this.#running = true
    let delay = this.#o.intervalMs
    try {
      // Keep passing while a pass was full, so a backlog drains faster than one batch per tick.
      for (let i = 0; i < 20; i++) {
        const r = await this.flushOnce()
        if (r.read < this.#o.perBucket) break
      }
      if (this.stats.consecutiveFailures > 0) {
        this.#o.logger?.info({ after: this.stats.consecutiveFailures }, 'usage flush recovered')
      }
      this.stats.consecutiveFailures = 0
      this.stats.lastError = null
      this.stats.lastSuccessAt = Date.now()
    } catch (err) {
      this.stats.consecutiveFailures++
      this.stats.lastError = (err as Error).message
      delay = Math.min(this.#o.maxBackoffMs, this.#o.intervalMs * 2 ** Math.min(this.stats.consecutiveFailures, 10))
      const log = this.stats.consecutiveFailures === 1 ? 'warn' : 'debug'
      this.#o.logger?.[log]({ err: (err as Error).message, retryInMs: delay }, 'usage flush failed; changes kept in redis, retrying')
    } finally {
      this.#running = false
      this.#schedule(delay)
    }
  }
}

/**
 * Counter store -> daily_usage. Every FLUSH_INTERVAL_MS the flusher reads the user-days the counter
 * scripts marked dirty (no keyspace scan), writes their absolute totals to Postgres in batches,
 * and only then takes them off the dirty sets — unless they changed meanwhile. On any error the
 * marks stay and the next attempt comes after a backoff: nothing is dropped. Several replicas may
 * flush at once: rows are version-guarded (see upsertTotals).
 *
 * Throughput and safety choices:
 * - rows are written in one global order (bucket, user, day): batches of this flusher running in
 *   parallel, and flushers of other replicas, lock rows in the same order, so they never deadlock;
 * - each batch is acked as soon as it is written, while the next batch is being written;
 * - a pass' batches are of equal size (none left to be written alone at the end) and go to
 *   Postgres as column arrays, built straight from the read entries (see TotalsColumns);
 * - the next pass is read only once this one is acked: readDirty returns the oldest marks, and
 *   until the ack those are this pass' own, so a read overlapping the writes would fetch (and pay
 *   Redis for) the same user-days again;
 * - a pass reads a bounded number of user-days per bucket. The counter store's Redis connection
 *   has a short command timeout (it is the decisions' connection); when a pass is too big to be
 *   read within it, the pass size is divided and the read retried at once, then grown back while
 *   passes succeed — a large backlog (after a long Postgres outage) drains instead of timing out
 *   forever.
 */
import type { Logger } from 'pino'
import type { Pool } from '../db/client.ts'
import { systemClock } from '../clock.ts'
import type { Clock } from '../clock.ts'
import { TotalsColumns, writeTotals } from '../db/daily-usage.ts'
import { writeIdempotencyRecords } from '../db/idempotency-records.ts'
import type { IdempotencyRecord } from '../db/idempotency-records.ts'
import type { WriteResult } from '../db/daily-usage.ts'
import { CounterUnavailableError } from '../counters/store.ts'
import type { CounterStore, DirtyUserDay, WrittenUserDay } from '../counters/store.ts'
import { mapLimited } from '../limited.ts'
import type { EventOutbox } from './event-outbox.ts'

export interface FlusherOptions {
  store: CounterStore
  pool: Pool
  /** FLUSH_INTERVAL_MS. @default 1000 */
  intervalMs?: number
  /** Most user-days read per bucket per pass (the pass shrinks below it when Redis is slow). @default 256 */
  perBucket?: number
  /** Most rows per INSERT statement. @default 5000 */
  batchSize?: number
  /** Batches written at once, each on its own pooled connection. @default 2 */
  writeConcurrency?: number
  /** Longest wait between attempts while failing. @default 5000 */
  maxBackoffMs?: number
  logger?: Pick<Logger, 'info' | 'warn' | 'error' | 'debug'>
  /** The clock the counter scripts stamp dirty marks with (for lag). @default the system clock */
  clock?: Clock
  /** Told how many rows each written batch put in daily_usage (the engine passes its Telemetry). */
  telemetry?: FlushTelemetry
  /** Copies threshold crossings to usage_events in each pass (and so in the final flush). */
  events?: Pick<EventOutbox, 'copy'>
}

/** The call the flusher makes to the telemetry seam. */
export interface FlushTelemetry {
  flushRows(rows: number): void
}

export interface FlushStats {
  /** Rows written to daily_usage since start. */
  rowsWritten: number
  /** Idempotent answers copied to idempotency_records since start. */
  answersKept: number
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

/** Overrides of the pass shape for one flushAll. */
export interface PassShape {
  /** Most user-days read per bucket per pass (never above what Redis was found to manage). */
  perBucket?: number
  /** Most rows per INSERT statement. */
  batchSize?: number
  /** Batches written at once. */
  writeConcurrency?: number
}

/**
 * Small steps for a flush that runs beside heavy decision traffic (the midnight close: every
 * user's first decision of the new day arrives while the whole closed day is written). Each
 * Redis script reads 32 user-days (two scripts in flight, as always) and each INSERT carries 500
 * rows, one INSERT at a time, so decisions slip in between (BENCHMARKS.md, item 5 of
 * the speed work, has the decision latency during a close with and without pacing).
 */
export const PACED: Required<PassShape> = { perBucket: 32, batchSize: 500, writeConcurrency: 1 }

/** Acknowledgements (one store call per bucket) in flight at once. */
const ACKS_IN_FLIGHT = 2

/** Full passes after which a read size that once failed is tried again. */
const CEILING_RELAX_PASSES = 32

/** Passes a timer tick makes at most while a backlog drains (each pass is bounded). */
const MAX_PASSES_PER_TICK = 1000

/** Identifies a user-day within the flusher. */
function userDayKey(entry: { userId: string; day: string }): string {
  return `${entry.userId}:${entry.day}`
}

/**
 * [from, to) of each batch: as few as `batchSize` allows, of equal size, so the last batch of a
 * pass is not a small one written alone while the other writer idles.
 */
export function batchBounds(rows: number, batchSize: number): [number, number][] {
  const count = Math.ceil(rows / Math.max(1, batchSize))
  const bounds: [number, number][] = []
  for (let i = 0; i < count; i++) bounds.push([Math.floor((i * rows) / count), Math.floor(((i + 1) * rows) / count)])
  return bounds
}

function byKey(a: DirtyUserDay, b: DirtyUserDay): number {
  if (a.bucket !== b.bucket) return a.bucket - b.bucket
  if (a.userId !== b.userId) return a.userId < b.userId ? -1 : 1
  return a.day < b.day ? -1 : a.day > b.day ? 1 : 0
}

export class Flusher {
  readonly #options: Required<Omit<FlusherOptions, 'logger' | 'clock' | 'telemetry' | 'events'>> & Pick<FlusherOptions, 'logger' | 'clock' | 'telemetry' | 'events'>
  readonly stats: FlushStats = { rowsWritten: 0, answersKept: 0, passes: 0, lastSuccessAt: null, lastError: null, consecutiveFailures: 0 }
  #timer: NodeJS.Timeout | undefined
  #running = false
  #stopped = true
  /** Serialises passes within the process: a pass never overlaps another. */
  #current: Promise<unknown> = Promise.resolve()
  /** Per-bucket read size of the next pass (adapts to how fast Redis answers). */
  #perBucketNow: number
  /** Largest per-bucket read size allowed now: halved when a read fails, relaxed after successes. */
  #ceiling: number
  /** Full passes since the ceiling last moved. */
  #fullPasses = 0
  /** User-days Postgres refused, already logged (once each). */
  readonly #rejected = new Set<string>()
  /** Whether the last pass left some bucket with more to read. */
  #lastPassFull = false
  /** Idempotent answers and threshold crossings the last pass found pending (0: both outboxes are empty). */
  #lastPassOutbox = 0

  constructor(options: FlusherOptions) {
    this.#options = {
      intervalMs: 1000,
      perBucket: 256,
      batchSize: 5000,
      writeConcurrency: 2,
      maxBackoffMs: 5000,
      ...options,
    }
    this.#perBucketNow = this.#ceiling = this.#options.perBucket
  }

  /** Most rows per INSERT statement. */
  get batchSize(): number {
    return this.#options.batchSize
  }

  /** Most user-days read per bucket per pass (the configured ceiling). */
  get perBucket(): number {
    return this.#options.perBucket
  }

  start(): void {
    this.#stopped = false
    this.#schedule(this.#options.intervalMs)
  }

  /** Stops the loop and makes a last full flush (graceful shutdown). */
  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#timer) clearTimeout(this.#timer)
    await this.#current.catch(() => {})
    await this.flushAll()
  }

  /** One pass: up to `perBucket` user-days of every bucket. */
  async flushOnce(shape: PassShape = {}): Promise<PassResult> {
    const run = this.#current.catch(() => {}).then(() => this.#pass(shape))
    this.#current = run
    return run
  }

  /**
   * Passes until nothing is dirty (or no progress is made): after it, Postgres has everything.
   * `shape` trades speed for the latency of decisions made meanwhile (see PACED).
   */
  async flushAll(shape: PassShape = {}, maxPasses = 10_000): Promise<PassResult> {
    const total: PassResult = { read: 0, written: 0, acked: 0 }
    for (let i = 0; i < maxPasses; i++) {
      const r = await this.flushOnce(shape)
      total.read += r.read
      total.written += r.written
      total.acked += r.acked
      if ((r.read === 0 || r.acked === 0) && this.#lastPassOutbox === 0) break
    }
    return total
  }

  /** Copies pending idempotent answers to Postgres, then marks them kept. Returns how many were pending. */
  async #keepAnswers(maxPerBucket: number): Promise<number> {
    const pending = await this.#options.store.readPendingKeys(maxPerBucket)
    if (pending.length === 0) return 0
    const records: IdempotencyRecord[] = []
    const byBucket = new Map<number, { userId: string; key: string }[]>()
    for (const p of pending) {
      if (p.kept) records.push({ userId: p.userId, key: p.key, answer: p.kept.answer, expiresAt: p.kept.expiresAt })
      const list = byBucket.get(p.bucket) ?? []
      list.push({ userId: p.userId, key: p.key })
      byBucket.set(p.bucket, list)
    }
    await writeIdempotencyRecords(this.#options.pool, records)
    await mapLimited([...byBucket], ACKS_IN_FLIGHT, ([bucket, keys]) => this.#options.store.acknowledgeKeys(bucket, keys))
    this.stats.answersKept += records.length
    return pending.length
  }

  /** Age (ms) of the oldest change not yet in Postgres; 0 when all is flushed. */
  async lagMs(now: number = (this.#options.clock ?? systemClock).now()): Promise<number> {
    const oldest = await this.#options.store.oldestDirty()
    return oldest === null ? 0 : Math.max(0, now - oldest)
  }

  async #read(limit: number): Promise<DirtyUserDay[]> {
    for (;;) {
      const size = Math.min(limit, this.#perBucketNow)
      // A pass held small on purpose (PACED) teaches the adaptive size nothing, either way.
      const shaped = size < this.#perBucketNow
      try {
        const entries = await this.#options.store.readDirty(size)
        const perBucket = new Map<number, number>()
        for (const e of entries) perBucket.set(e.bucket, (perBucket.get(e.bucket) ?? 0) + 1)
        this.#lastPassFull = [...perBucket.values()].some((n) => n >= size)
        if (this.#lastPassFull && !shaped) {
          // A size that failed stays the ceiling for a while; then it is tried again.
          if (++this.#fullPasses >= CEILING_RELAX_PASSES && this.#ceiling < this.#options.perBucket) {
            this.#ceiling = Math.min(this.#options.perBucket, this.#ceiling * 2)
            this.#fullPasses = 0
          }
          this.#perBucketNow = Math.min(this.#ceiling, size * 2)
        }
        return entries
      } catch (err) {
        // Too much to read within the connection's command timeout (or Redis is away): read less.
        if (!(err instanceof CounterUnavailableError) || size <= 1) throw err
        if (shaped) {
          limit = Math.max(1, Math.floor(size / 2))
          continue
        }
        this.#ceiling = this.#perBucketNow = Math.max(1, Math.floor(size / 2))
        this.#fullPasses = 0
        this.#options.logger?.debug({ err: err.message, perBucket: this.#perBucketNow }, 'usage flush read failed; reading less per pass')
      }
    }
  }

  async #pass(shape: PassShape): Promise<PassResult> {
    const readAt = (this.#options.clock ?? systemClock).now()
    const entries = await this.#read(shape.perBucket ?? this.#options.perBucket)
    // Read after the user-days: every idempotent answer that counted in what was just read is in
    // the outbox by now, and is in Postgres before those counts are. A count in daily_usage then
    // never goes without the answer a retry after a Redis loss must replay.
    this.#lastPassOutbox = await this.#keepAnswers(shape.perBucket ?? this.#options.perBucket)
    // The crossings those decisions made (event-outbox.ts); pending ones keep flushAll passing.
    const copied = await this.#options.events?.copy(shape.perBucket ?? this.#options.perBucket)
    if (copied && copied.acked > 0) this.#lastPassOutbox += copied.read
    if (entries.length === 0) return { read: 0, written: 0, acked: 0 }
    entries.sort(byKey)
    const batches = batchBounds(entries.length, shape.batchSize ?? this.#options.batchSize)

    let written = 0
    let acked = 0
    let next = 0
    let failed = false
    const worker = async (): Promise<void> => {
      while (next < batches.length && !failed) {
        const [from, to] = batches[next++] as [number, number]
        // The statement's columns straight from the entries; `source[i]` is the entry of row i.
        const columns = new TotalsColumns()
        const source: DirtyUserDay[] = []
        for (let i = from; i < to; i++) {
          const e = entries[i] as DirtyUserDay
          // A day hash that expired has nothing left to write; its mark is simply removed.
          if (!e.state) continue
          columns.add(e.userId, e.day, e.state.counts, e.state.version)
          source.push(e)
        }
        let result: WriteResult
        try {
          result = await writeTotals(this.#options.pool, columns)
        } catch (err) {
          failed = true
          throw err
        }
        // A row Postgres refused stays dirty (its exact value kept in Redis) and is retried each
        // pass; it never holds back the rows around it.
        let refused: Set<DirtyUserDay> | undefined
        for (const { index, error } of result.rejected) {
          const e = source[index] as DirtyUserDay
          ;(refused ??= new Set()).add(e)
          this.#reportRejected(e, error)
        }
        const n = result.written
        written += n
        this.stats.rowsWritten += n
        this.#options.telemetry?.flushRows(n)
        // Not `acked += await …`: that reads `acked` before awaiting, and the other worker's
        // acknowledgements in between would be lost from the count.
        const batchAcked = await this.#ack(entries, from, to, readAt, refused)
        acked += batchAcked
      }
    }
    // allSettled: a failed batch stops the pass only once the other worker is done too, so no write
    // of this pass outlives it.
    const concurrency = shape.writeConcurrency ?? this.#options.writeConcurrency
    const settled = await Promise.allSettled(Array.from({ length: Math.min(concurrency, batches.length) }, worker))
    const rejected = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (rejected) throw rejected.reason
    this.stats.passes++
    return { read: entries.length, written, acked }
  }

  #reportRejected(row: { userId: string; day: string }, error: string): void {
    const member = userDayKey(row)
    if (this.#rejected.has(member)) return
    if (this.#rejected.size < 10_000) this.#rejected.add(member)
    this.#options.logger?.error({ userId: row.userId, day: row.day, err: error }, 'postgres refused a usage row; kept in redis, retried each flush')
  }

  /** Acknowledges the written entries `from`..`to` of the sorted pass (one store call per bucket), all but `refused`. */
  async #ack(entries: readonly DirtyUserDay[], from: number, to: number, readAt: number, refused?: Set<DirtyUserDay>): Promise<number> {
    // Sorted by bucket first: each bucket's entries are one run.
    const runs: [number, WrittenUserDay[]][] = []
    let run: WrittenUserDay[] = []
    let bucket = -1
    for (let i = from; i < to; i++) {
      const e = entries[i] as DirtyUserDay
      if (refused?.has(e)) continue
      if (e.bucket !== bucket) {
        bucket = e.bucket
        run = []
        runs.push([bucket, run])
      }
      // A day that is gone has nothing newer to keep: its mark goes whatever the version.
      run.push({ userId: e.userId, day: e.day, version: e.state?.version ?? Number.MAX_SAFE_INTEGER })
    }
    const counts = await mapLimited(runs, ACKS_IN_FLIGHT, ([b, written]) => this.#options.store.acknowledge(b, written, readAt))
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
    let delay = this.#options.intervalMs
    try {
      // Keep passing while a pass left more to read, so a backlog drains faster than one pass per tick.
      for (let i = 0; i < MAX_PASSES_PER_TICK && !this.#stopped; i++) {
        const r = await this.flushOnce()
        if (!this.#lastPassFull || r.acked === 0) break
      }
      if (this.stats.consecutiveFailures > 0) {
        this.#options.logger?.info({ after: this.stats.consecutiveFailures }, 'usage flush recovered')
      }
      this.stats.consecutiveFailures = 0
      this.stats.lastError = null
      this.stats.lastSuccessAt = Date.now()
    } catch (err) {
      this.stats.consecutiveFailures++
      this.stats.lastError = (err as Error).message
      const backoff = Math.min(this.#options.maxBackoffMs, this.#options.intervalMs * 2 ** Math.min(this.stats.consecutiveFailures, 10))
      delay = Math.max(this.#options.intervalMs, backoff)
      const log = this.stats.consecutiveFailures === 1 ? 'warn' : 'debug'
      this.#options.logger?.[log]({ err: (err as Error).message, retryInMs: delay }, 'usage flush failed; changes kept in redis, retrying')
    } finally {
      this.#running = false
      this.#schedule(delay)
    }
  }
}

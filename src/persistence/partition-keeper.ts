/**
 * Keeps `daily_usage`'s monthly partitions ahead of the calendar (docs/scaling.md). On the leader
 * (the one process in embedded mode), at start and then once per UTC day, it makes sure the current
 * month and the next `monthsAhead` have their partitions — moving into a new one any rows that
 * landed in the DEFAULT partition meanwhile — and, with `retentionMonths`, detaches and drops the
 * partitions that end before the first day of the month `retentionMonths` back. The current month
 * is never dropped (retentionMonths >= 1).
 *
 * Every step is idempotent, so a run repeated by a new leader, or after a failure, does no harm. A
 * failed run (a lock not granted within its timeout, Postgres away) is retried at the next check.
 */
import type { Logger } from 'pino'
import type { Clock } from '../clock.ts'
import { utcDay } from '../clock.ts'
import type { Pool } from '../db/client.ts'
import { DEFAULT_PARTITION, addMonths, dropPartitionsBefore, ensurePartitions, monthOf } from '../db/partitions.ts'
import type { DroppedPartition } from '../db/partitions.ts'

/** Months after the current one whose partitions exist ahead of time. */
export const DEFAULT_MONTHS_AHEAD = 3

export interface PartitionKeeperOptions {
  pool: Pool
  clock: Clock
  /** Whether this replica runs the jobs now (the leader lock). */
  isLeader: () => boolean
  /** Months after the current one that get their partition ahead of time. @default 3 */
  monthsAhead?: number
  /**
   * HISTORY_RETENTION_MONTHS: partitions that end before the first day of the month this many
   * months back are dropped (1 keeps the previous month and the current one). @default undefined
   * (history is kept)
   */
  retentionMonths?: number
  /** How often a replica checks whether it leads and today's run is done, ms. @default 60000 */
  checkIntervalMs?: number
  logger?: Pick<Logger, 'info' | 'warn' | 'error' | 'debug'>
}

export interface PartitionRun {
  day: string
  /** Partitions created by this run. */
  created: string[]
  /** Rows moved out of the DEFAULT partition into the created ones. */
  moved: number
  dropped: DroppedPartition[]
  /** Rows older than the retention deleted from the DEFAULT partition. */
  defaultRowsDeleted: number
}

export class PartitionKeeper {
  readonly #options: PartitionKeeperOptions
  #timer: NodeJS.Timeout | undefined
  #lastRun: string | undefined
  #running: Promise<unknown> = Promise.resolve()
  #failures = 0

  constructor(options: PartitionKeeperOptions) {
    const { monthsAhead, retentionMonths } = options
    if (monthsAhead !== undefined && !(Number.isInteger(monthsAhead) && monthsAhead >= 0)) {
      throw new RangeError(`monthsAhead must be a whole number >= 0, got ${monthsAhead}`)
    }
    if (retentionMonths !== undefined && !(Number.isInteger(retentionMonths) && retentionMonths >= 1)) {
      throw new RangeError(`retentionMonths must be a whole number >= 1, got ${retentionMonths}`)
    }
    this.#options = options
  }

  /** Runs at once (when leading), then checks every checkIntervalMs. */
  start(): void {
    void this.tick()
    this.#timer = setInterval(() => void this.tick(), this.#options.checkIntervalMs ?? 60_000)
    this.#timer.unref()
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = undefined
    await this.#running.catch(() => {})
  }

  /** Runs if this replica leads and has not run today (UTC, the service clock). */
  async tick(): Promise<PartitionRun | null> {
    if (!this.#options.isLeader()) return null
    const day = utcDay(this.#options.clock.now())
    if (this.#lastRun === day) return null
    try {
      const result = await this.run()
      this.#lastRun = day
      if (this.#failures > 0) this.#options.logger?.info({ after: this.#failures }, 'partition maintenance recovered')
      this.#failures = 0
      return result
    } catch (err) {
      const level = this.#failures++ === 0 ? 'error' : 'debug'
      this.#options.logger?.[level]({ err: (err as Error).message, day }, 'partition maintenance failed; will retry')
      return null
    }
  }

  /** One run now, whoever leads (runs never overlap in this process). */
  run(): Promise<PartitionRun> {
    const run = this.#running.catch(() => {}).then(() => this.#run())
    this.#running = run
    return run
  }

  async #run(): Promise<PartitionRun> {
    const { pool, logger, retentionMonths } = this.#options
    const day = utcDay(this.#options.clock.now())
    const month = monthOf(day)
    const ensured = await ensurePartitions(pool, month, this.#options.monthsAhead ?? DEFAULT_MONTHS_AHEAD)
    const created = ensured.filter((p) => p.created)
    for (const p of created) {
      logger?.info({ partition: p.name, moved: p.moved }, `daily_usage partition ${p.name} created` +
        (p.moved > 0 ? `, ${p.moved} rows moved into it from ${DEFAULT_PARTITION}` : ''))
    }
    let dropped: DroppedPartition[] = []
    let defaultRowsDeleted = 0
    if (retentionMonths !== undefined) {
      const cutoff = addMonths(month, -retentionMonths)
      ;({ dropped, defaultRowsDeleted } = await dropPartitionsBefore(pool, cutoff))
      for (const p of dropped) {
        logger?.info({ partition: p.name, from: p.from, to: p.to, estimatedRows: p.estimatedRows, bytes: p.bytes, retentionMonths },
          `daily_usage partition ${p.name} (${p.from} to ${p.to}) dropped: older than ${retentionMonths} months`)
      }
      if (defaultRowsDeleted > 0) {
        logger?.info({ rows: defaultRowsDeleted, before: cutoff, retentionMonths },
          `${defaultRowsDeleted} rows before ${cutoff} deleted from ${DEFAULT_PARTITION}: older than ${retentionMonths} months`)
      }
    }
    return { day, created: created.map((p) => p.name), moved: created.reduce((n, p) => n + p.moved, 0), dropped, defaultRowsDeleted }
  }
}

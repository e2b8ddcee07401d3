/**
 * The midnight job. At 00:00:00Z (node-cron, UTC) the leader closes the day that ended: it flushes
 * everything to daily_usage, writes each user's storage gauge into the new day's row, records the
 * run in scheduler_runs and logs "daily reset: <date> closed, N users". Redis keys of that day
 * expire by themselves.
 *
 * node-cron can miss a run (process paused, no leader at midnight) or fire twice: the leader also
 * checks every second whether the previous day is closed, and the job records each closed day
 * in scheduler_runs, so it runs once per day whatever happens, and catches up after a start.
 * The check reads the injectable clock, so tests cross midnight without waiting for one.
 */
import cron from 'node-cron'
import type { ScheduledTask } from 'node-cron'
import type { Logger } from 'pino'
import type { Clock } from '../clock.ts'
import { DAY_MS, startOfUtcDay, previousDay, utcDay } from '../clock.ts'
import type { Pool } from '../db/client.ts'
import { carryStorageForward, countUsersOfDay } from '../db/daily-usage.ts'
import { deleteExpiredIdempotencyRecords } from '../db/idempotency-records.ts'
import { hasRun, recordRun } from '../db/scheduler-runs.ts'
import { PACED } from './flusher.ts'
import type { Flusher } from './flusher.ts'

export const MIDNIGHT_JOB = 'midnight'

export interface SchedulerOptions {
  pool: Pool
  flusher: Flusher
  clock: Clock
  /** Whether this replica runs the jobs now (the leader lock). */
  isLeader: () => boolean
  /** How often the leader checks that the previous day is closed, ms. @default 1000 */
  checkIntervalMs?: number
  logger?: Pick<Logger, 'info' | 'warn' | 'error' | 'debug'>
}

export interface CloseDayResult {
  day: string
  /** False when the day was already closed (by this or another replica). */
  ran: boolean
  users: number
  storageCarried: number
}

export class Scheduler {
  readonly #options: SchedulerOptions
  #task: ScheduledTask | undefined
  #timer: NodeJS.Timeout | undefined
  #lastClosed: string | undefined
  #running: Promise<unknown> = Promise.resolve()
  /** Consecutive failed attempts to close the previous day. */
  #failures = 0

  constructor(options: SchedulerOptions) {
    this.#options = options
  }

  start(): void {
    this.#task = cron.schedule('0 0 * * *', () => this.tick(), { timezone: 'UTC', name: 'quota-midnight', noOverlap: true })
    this.#timer = setInterval(() => void this.tick(), this.#options.checkIntervalMs ?? 1000)
    this.#timer.unref()
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    await this.#task?.destroy()
    await this.#running.catch(() => {})
  }

  /** Closes the previous day if this replica leads and it is not closed yet. */
  async tick(): Promise<CloseDayResult | null> {
    if (!this.#options.isLeader()) return null
    const closed = previousDay(utcDay(this.#options.clock.now()))
    if (this.#lastClosed === closed) return null
    try {
      const result = await this.closeDay(closed)
      this.#lastClosed = closed
      if (this.#failures > 0) this.#options.logger?.info({ day: closed, after: this.#failures }, 'daily reset recovered')
      this.#failures = 0
      return result
    } catch (err) {
      // Retried every check interval (1 s) until it works: one error line, not one a second.
      const level = this.#failures++ === 0 ? 'error' : 'debug'
      this.#options.logger?.[level]({ err: (err as Error).message, day: closed }, 'daily reset failed; will retry')
      return null
    }
  }

  /** Closes `day` (idempotent: a second call, here or on another replica, does nothing). */
  async closeDay(day: string): Promise<CloseDayResult> {
    const run = this.#running.catch(() => {}).then(() => this.#close(day))
    this.#running = run
    return run
  }

  async #close(day: string): Promise<CloseDayResult> {
    const { pool } = this.#options
    if (await hasRun(pool, MIDNIGHT_JOB, day)) return { day, ran: false, users: 0, storageCarried: 0 }

    // Paced: every user's first decision of the new day arrives while this runs.
    await this.#options.flusher.flushAll(PACED)
    // The gauge carries over: the new day starts with the closed day's storage.
    const storageCarried = await carryStorageForward(pool, day, utcDay(startOfUtcDay(day) + DAY_MS))
    const users = await countUsersOfDay(pool, day)
    // Copies of idempotent answers past their 24 h are of no use any more.
    await deleteExpiredIdempotencyRecords(pool)
    if (!(await recordRun(pool, MIDNIGHT_JOB, day, { users, storageCarried }))) return { day, ran: false, users, storageCarried }
    this.#options.logger?.info({ day, users, storageCarried }, `daily reset: ${day} closed, ${users} users`)
    return { day, ran: true, users, storageCarried }
  }
}

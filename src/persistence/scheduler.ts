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
import { DAY_MS, dayStartOfDay, previousDay, utcDay } from '../clock.ts'
import type { Pool } from '../db/client.ts'
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
  readonly #o: SchedulerOptions
  #task: ScheduledTask | undefined
  #timer: NodeJS.Timeout | undefined
  #lastClosed: string | undefined
  #running: Promise<unknown> = Promise.resolve()
  /** Consecutive failed attempts to close the previous day. */
  #failures = 0

  constructor(options: SchedulerOptions) {
    this.#o = options
  }

  start(): void {
    this.#task = cron.schedule('0 0 * * *', () => this.tick(), { timezone: 'UTC', name: 'quota-midnight', noOverlap: true })
    this.#timer = setInterval(() => void this.tick(), this.#o.checkIntervalMs ?? 1000)
    this.#timer.unref()
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    await this.#task?.destroy()
    await this.#running.catch(() => {})
  }

  /** Closes the previous day if this replica leads and it is not closed yet. */
  async tick(): Promise<CloseDayResult | null> {
    if (!this.#o.isLeader()) return null
    const closed = previousDay(utcDay(this.#o.clock.now()))
    if (this.#lastClosed === closed) return null
    try {
      const result = await this.closeDay(closed)
      this.#lastClosed = closed
      if (this.#failures > 0) this.#o.logger?.info({ day: closed, after: this.#failures }, 'daily reset recovered')
      this.#failures = 0
      return result
    } catch (err) {
      // Retried every check interval (1 s) until it works: one error line, not one a second.
      const level = this.#failures++ === 0 ? 'error' : 'debug'
      this.#o.logger?.[level]({ err: (err as Error).message, day: closed }, 'daily reset failed; will retry')
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
    const { pool } = this.#o
    const done = await pool.query('SELECT 1 FROM scheduler_runs WHERE job = $1 AND day = $2', [MIDNIGHT_JOB, day])
    if ((done.rowCount ?? 0) > 0) return { day, ran: false, users: 0, storageCarried: 0 }

    // Paced: every user's first decision of the new day arrives while this runs.
    await this.#o.flusher.flushAll(PACED)
    const next = utcDay(dayStartOfDay(day) + DAY_MS)
    // The gauge carries over: the new day starts with the closed day's storage.
    const carried = await pool.query(
      `INSERT INTO daily_usage (user_id, date, storage_gb, version, updated_at)
       SELECT user_id, $2::date, storage_gb, 0, now() FROM daily_usage WHERE date = $1 AND storage_gb > 0
       ON CONFLICT (user_id, date) DO NOTHING`,
      [day, next],
    )
    const users = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM daily_usage WHERE date = $1', [day])
    const n = users.rows[0]?.n ?? 0
    const recorded = await pool.query(
      `INSERT INTO scheduler_runs (job, day, detail) VALUES ($1, $2, $3) ON CONFLICT (job, day) DO NOTHING`,
      [MIDNIGHT_JOB, day, JSON.stringify({ users: n, storageCarried: carried.rowCount ?? 0 })],
    )
    if ((recorded.rowCount ?? 0) === 0) return { day, ran: false, users: n, storageCarried: carried.rowCount ?? 0 }
    this.#o.logger?.info({ day, users: n, storageCarried: carried.rowCount ?? 0 }, `daily reset: ${day} closed, ${n} users`)
    return { day, ran: true, users: n, storageCarried: carried.rowCount ?? 0 }
  }
}

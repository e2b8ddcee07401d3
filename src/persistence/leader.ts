/**
 * Exactly one replica runs the scheduled jobs. The leader holds a Postgres session-level advisory
 * lock on a dedicated connection; when that process dies or its connection drops, Postgres
 * releases the lock and another replica's next attempt takes it over.
 */
import type { Logger } from 'pino'
import { createClient } from '../db/client.ts'
import type { Client } from '../db/client.ts'

/** Advisory lock id of the scheduler ("quotaldr"). */
export const LEADER_LOCK_ID = 0x71756f74_6c6472n

export interface LeaderLockOptions {
  databaseUrl: string
  /** How often a follower tries to take the lock, ms. @default 1000 */
  retryMs?: number
  logger?: Pick<Logger, 'info' | 'warn' | 'debug'>
  /** Called when leadership is gained or lost. */
  onChange?: (leader: boolean) => void
}

export class LeaderLock {
  readonly #options: LeaderLockOptions
  #client: Client | undefined
  #leader = false
  #timer: NodeJS.Timeout | undefined
  #stopped = true

  constructor(options: LeaderLockOptions) {
    this.#options = options
  }

  get isLeader(): boolean {
    return this.#leader
  }

  async start(): Promise<void> {
    this.#stopped = false
    await this.#attempt()
  }

  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#timer) clearTimeout(this.#timer)
    const client = this.#client
    this.#client = undefined
    this.#set(false)
    if (client) await client.end().catch(() => {}) // ends the session: the lock is released
  }

  async #attempt(): Promise<void> {
    if (this.#stopped) return
    try {
      if (!this.#client) {
        const client = createClient(this.#options.databaseUrl, (err) => {
          this.#options.logger?.warn({ err: err.message }, 'leader lock connection error')
        })
        client.on('end', () => {
          if (this.#client === client) {
            this.#client = undefined
            this.#set(false)
          }
        })
        await client.connect()
        this.#client = client
      }
      if (!this.#leader) {
        const { rows } = await this.#client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [
          LEADER_LOCK_ID.toString(),
        ])
        this.#set(rows[0]?.ok === true)
      } else {
        await this.#client.query('SELECT 1') // notice a dead connection while leading
      }
    } catch (err) {
      this.#options.logger?.debug({ err: (err as Error).message }, 'leader lock attempt failed')
      const client = this.#client
      this.#client = undefined
      this.#set(false)
      await client?.end().catch(() => {})
    } finally {
      if (!this.#stopped) {
        this.#timer = setTimeout(() => void this.#attempt(), this.#options.retryMs ?? 1000)
        this.#timer.unref()
      }
    }
  }

  #set(leader: boolean): void {
    if (leader === this.#leader) return
    this.#leader = leader
    this.#options.logger?.info({ leader }, leader ? 'this replica now runs the scheduled jobs' : 'this replica no longer runs the scheduled jobs')
    this.#options.onChange?.(leader)
  }
}

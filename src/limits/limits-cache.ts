/**
 * Each user's tier and each tier's limits, cached in the process so a decision needs no Postgres
 * round trip. Changes made anywhere — the admin API, another replica, or a plain SQL UPDATE in
 * psql — reach every process within milliseconds: triggers NOTIFY `quota_changes`, and one
 * LISTEN connection per process drops the stale entries. NOTIFYs sent while that connection is
 * down are lost (Postgres does not queue them), so on every (re)connect the whole cache is
 * dropped and reloaded; a periodic reload is the safety net behind both.
 */
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { CHANGE_CHANNEL, subscribeChanges } from '../db/changes.ts'
import type { ChangeSubscription } from '../db/changes.ts'
import type { Pool } from '../db/client.ts'
import { ensureUser, getUser } from '../db/users.ts'
import type { UserRow } from '../db/users.ts'
import { loadAllTierLimits } from './tier-limits.ts'
import type { TierLimits } from './tier-limits.ts'

export { CHANGE_CHANNEL }

export interface LimitsCacheOptions {
  pool: Pool
  /**
   * Connection string for the LISTEN connection. Not needed with embedded mode's pool: it
   * listens in-process (db/changes.ts).
   */
  databaseUrl?: string
  /** Tier of users first seen. @default 'free' */
  defaultTier?: string
  logger?: Pick<Logger, 'info' | 'warn' | 'debug'>
  /** Most users kept in the tier cache. @default 100_000 */
  maxUsers?: number
  /** Safety expiry of a cached user tier, ms. @default 60_000 */
  userTtlMs?: number
  /** Safety reload period of tier limits, ms. @default 30_000 */
  limitsReloadMs?: number
  /** Delay before re-opening a dropped LISTEN connection, ms. @default 250 */
  reconnectDelayMs?: number
}

export class LimitsCache {
  readonly #pool: Pool
  readonly #databaseUrl: string | undefined
  readonly #defaultTier: string
  readonly #logger: LimitsCacheOptions['logger']
  readonly #users: LRUCache<string, string>
  readonly #limitsReloadMs: number
  readonly #reconnectDelayMs: number
  #tiers = new Map<string, TierLimits>()
  #listener: ChangeSubscription | undefined
  #reloadTimer: NodeJS.Timeout | undefined
  #reconnectTimer: NodeJS.Timeout | undefined
  #closed = false
  /** Bumped on every invalidation, so a load that raced with it is not cached. */
  #generation = 0
  #listening = false
  readonly #listeners: ((userId: string | null) => void)[] = []
  /** Tier reads under way, by user: concurrent misses wait for the same one. */
  readonly #loading = new Map<string, Promise<string>>()

  constructor(options: LimitsCacheOptions) {
    this.#pool = options.pool
    this.#databaseUrl = options.databaseUrl
    this.#defaultTier = options.defaultTier ?? 'free'
    this.#logger = options.logger
    this.#users = new LRUCache({ max: options.maxUsers ?? 100_000, ttl: options.userTtlMs ?? 60_000 })
    this.#limitsReloadMs = options.limitsReloadMs ?? 30_000
    this.#reconnectDelayMs = options.reconnectDelayMs ?? 250
  }

  /** Loads the tier limits and opens the LISTEN connection. */
  async start(): Promise<void> {
    await this.reloadLimits()
    await this.#listen()
    this.#reloadTimer = setInterval(() => {
      this.reloadLimits().catch((err: Error) => this.#logger?.warn({ err: err.message }, 'tier limits reload failed'))
    }, this.#limitsReloadMs)
    this.#reloadTimer.unref()
  }

  async stop(): Promise<void> {
    this.#closed = true
    if (this.#reloadTimer) clearInterval(this.#reloadTimer)
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer)
    const listener = this.#listener
    this.#listener = undefined
    this.#listening = false
    if (listener) await listener.close().catch(() => {})
  }

  /** True while the LISTEN connection is up (changes arrive at once). */
  get listening(): boolean {
    return this.#listening
  }

  async reloadLimits(): Promise<void> {
    this.#tiers = await loadAllTierLimits(this.#pool)
  }

  /** Limits of a tier; undefined when the tier does not exist. */
  tierLimits(tier: string): TierLimits | undefined {
    return this.#tiers.get(tier)
  }

  tiers(): ReadonlyMap<string, TierLimits> {
    return this.#tiers
  }

  /**
   * The user's tier: from the cache, else from Postgres, provisioning a user first seen with the
   * default tier (once; later calls hit the cache). Concurrent misses of one user share one read:
   * after a restart or a cache expiry, a busy user's hundred parallel requests cost one query, not
   * a hundred queued on the pool ahead of everyone else's.
   */
  userTier(userId: string, username?: string): Promise<string> {
    const cached = this.#users.get(userId)
    if (cached !== undefined) return Promise.resolve(cached)
    const pending = this.#loading.get(userId)
    if (pending) return pending
    const load: Promise<string> = this.#loadTier(userId, username).finally(() => {
      if (this.#loading.get(userId) === load) this.#loading.delete(userId)
    })
    this.#loading.set(userId, load)
    return load
  }

  async #loadTier(userId: string, username: string | undefined): Promise<string> {
    return (await this.provisionUser(userId, username)).tier
  }

  /**
   * The user's row, created on first sight with the default tier (docs/architecture.md, Auth) — the one place users
   * are provisioned: the auth layer calls it for a token's `sub`, decisions for an unknown id.
   * Known users (the common case) cost one indexed read; the tier read is cached.
   */
  async provisionUser(userId: string, username?: string): Promise<UserRow> {
    const generation = this.#generation
    const user = (await getUser(this.#pool, userId))
      ?? (await ensureUser(this.#pool, { id: userId, username, defaultTier: this.#defaultTier }))
    // A change notified while the read was under way may not be in what it read: not cached.
    if (generation === this.#generation) this.#users.set(user.id, user.tier)
    return user
  }

  /** The cached tier of a user, without touching Postgres (undefined on a miss). */
  cachedUserTier(userId: string): string | undefined {
    return this.#users.get(userId)
  }

  /**
   * Calls `listener` whenever something a cached decision depends on may have changed: a user's
   * tier (with its id), or tier limits / a reset (null = everyone). The deny cache listens.
   */
  onInvalidate(listener: (userId: string | null) => void): void {
    this.#listeners.push(listener)
  }

  invalidateUser(userId: string): void {
    this.#generation++
    this.#users.delete(userId)
    // Requests arriving from now on must not share a read that began before the change.
    this.#loading.delete(userId)
    for (const l of this.#listeners) l(userId)
  }

  async invalidateAll(): Promise<void> {
    this.#generation++
    this.#users.clear()
    this.#loading.clear()
    for (const l of this.#listeners) l(null)
    await this.reloadLimits()
  }

  async #listen(): Promise<void> {
    // Set once subscribed: an end reported before that belongs to a failed attempt, retried by the caller.
    const mine: { subscription?: ChangeSubscription } = {}
    const subscription = await subscribeChanges(this.#pool, this.#databaseUrl, {
      onPayload: (payload) => this.#onNotification(payload),
      onError: (err) => this.#logger?.warn({ err: err.message }, 'postgres LISTEN connection error'),
      onEnd: () => {
        if (mine.subscription === undefined || this.#listener !== mine.subscription) return
        this.#listener = undefined
        this.#listening = false
        if (!this.#closed) this.#scheduleReconnect()
      },
    })
    mine.subscription = subscription
    this.#listener = subscription
    this.#listening = true
  }

  #scheduleReconnect(): void {
    this.#reconnectTimer = setTimeout(() => {
      this.#listen()
        .then(async () => {
          // Changes made while we were not listening were never delivered: start afresh.
          await this.invalidateAll()
          this.#logger?.info('postgres LISTEN connection restored; tier caches reloaded')
        })
        .catch((err: Error) => {
          this.#logger?.debug({ err: err.message }, 'postgres LISTEN reconnect failed')
          if (!this.#closed) this.#scheduleReconnect()
        })
    }, this.#reconnectDelayMs)
    this.#reconnectTimer.unref()
  }

  #onNotification(payload: string): void {
    if (payload === 'reset') {
      // Counters were zeroed (admin reset on some replica): cached denials are stale.
      for (const l of this.#listeners) l(null)
      return
    }
    if (payload.startsWith('user:')) {
      this.invalidateUser(payload.slice('user:'.length))
      return
    }
    this.invalidateAll().catch((err: Error) => this.#logger?.warn({ err: err.message }, 'tier limits reload failed'))
  }
}

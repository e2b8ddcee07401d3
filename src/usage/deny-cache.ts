/**
 * Per-process memory of users already over a daily limit, so abusive traffic (a client retrying a
 * denied call in a loop) costs no Redis round trip. It can only ever deny — never admit — so it
 * cannot cause over-admission; the risk is a stale denial, bounded three ways:
 * - entries live 1 s (a refund or reset on another replica is seen within that);
 * - an entry is used only with the same tier and the same limit as the current decision;
 * - entries are dropped at once on this process' refunds and resets, and on every replica on tier
 *   changes, limit changes and resets (NOTIFY quota_changes, via LimitsCache.onInvalidate).
 * Keys carry the UTC day, so midnight needs no purge. Daily metrics only: the storage gauge goes
 * down when data is deleted.
 */
import { LRUCache } from 'lru-cache'
import type { MetricName } from '../metrics.ts'
import type { ConsumeResult } from './types.ts'

export interface Denial {
  tier: string
  /** Micro-units at the time of the denial. */
  current: number
  limit: number
  /**
   * The answer the service built from this entry for one amount, reused while the entry lives: a
   * client hammering a denied call gets the same (frozen) answer object, which lets the HTTP layer
   * reuse what it rendered from it too.
   */
  answer?: { amount: number; result: ConsumeResult }
}

export interface DenyCacheOptions {
  /** @default 1000 */
  ttlMs?: number
  /** @default 100_000 */
  max?: number
}

export class DenyCache {
  readonly #entries: LRUCache<string, Denial>
  /** Keys per user, so one user's entries can be dropped without a scan. */
  readonly #byUser = new Map<string, Set<string>>()

  constructor(options: DenyCacheOptions = {}) {
    this.#entries = new LRUCache({
      max: options.max ?? 100_000,
      ttl: options.ttlMs ?? 1000,
      dispose: (_value, key) => {
        const userId = key.slice(0, key.indexOf('|'))
        const keys = this.#byUser.get(userId)
        keys?.delete(key)
        if (keys?.size === 0) this.#byUser.delete(userId)
      },
    })
  }

  static key(userId: string, day: string, metric: MetricName): string {
    return `${userId}|${day}|${metric}`
  }

  /** The remembered denial, if `amount` (micro) would still be over the same tier's same limit. */
  check(userId: string, day: string, metric: MetricName, amount: number, tier: string, limit: number | null): Denial | undefined {
    // Most traffic is admitted and most processes remember no denial: no key built, no lookup.
    if (limit === null || this.#entries.size === 0) return undefined
    const denial = this.#entries.get(DenyCache.key(userId, day, metric))
    if (!denial || denial.tier !== tier || denial.limit !== limit) return undefined
    return denial.current + amount > denial.limit ? denial : undefined
  }

  remember(userId: string, day: string, metric: MetricName, denial: Denial): void {
    const key = DenyCache.key(userId, day, metric)
    this.#entries.set(key, denial)
    let keys = this.#byUser.get(userId)
    if (!keys) this.#byUser.set(userId, (keys = new Set()))
    keys.add(key)
  }

  /** Drops one user's entries, or everyone's (null). */
  forget(userId: string | null): void {
    if (userId === null) {
      this.#entries.clear()
      this.#byUser.clear()
      return
    }
    for (const key of [...(this.#byUser.get(userId) ?? [])]) this.#entries.delete(key)
  }

  get size(): number {
    return this.#entries.size
  }
}

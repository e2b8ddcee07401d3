/**
 * Per-process memory of users already over a daily limit, so abusive traffic (a client retrying a
 * denied call in a loop) costs no Redis round trip. It can only ever deny — never admit — so it
 * cannot cause over-admission; the risk is a stale denial, bounded three ways:
 * - a denial answers for 1 s (a refund or reset on another replica is seen within that);
 * - an entry is used only with the same tier and the same limit as the current decision;
 * - entries are dropped at once on this process' refunds and resets, and on every replica on tier
 *   changes, limit changes and resets (NOTIFY quota_changes, via LimitsCache.onInvalidate).
 * Keys carry the UTC day, so midnight needs no purge. Daily metrics only: the storage gauge goes
 * down when data is deleted.
 *
 * After its second an entry stays (up to `hintMs`) as a hint only: this user is likely still over
 * the limit. A decision so hinted goes to the store as the *lead*, and identical decisions that
 * arrive while it is in flight wait for its answer instead of each asking the store; a denial is
 * then theirs too, and anything else sends them to the store as before. An admission is never
 * shared. A lead whose user is forgotten meanwhile (refund, reset, tier change) shares nothing.
 */
import { LRUCache } from 'lru-cache'
import type { MetricName } from '../metrics.ts'
import type { ConsumeResult } from './types.ts'

/** What the store said of a user-day-metric at a denial (or at an admission that left less than the amount). */
export interface Observed {
  tier: string
  /** Micro-units at the time of the answer. */
  current: number
  limit: number
}

export interface Denial extends Observed {
  /** Until when (`now()`) the entry answers denials; after that it is a hint only. */
  freshUntil: number
  /**
   * The answer the service built from this entry for one amount, reused while the entry lives: a
   * client hammering a denied call gets the same (frozen) answer object, which lets the HTTP layer
   * reuse what it rendered from it too.
   */
  answer?: { amount: number; result: ConsumeResult }
}

/** A hinted decision in flight: identical decisions of at least its amount wait for it. */
export class Lead {
  /** Set when the user's entries were forgotten while the lead was in flight: its answer is not shared. */
  stale = false
  #settled: Promise<void> | undefined
  #release: (() => void) | undefined

  constructor(readonly key: string, readonly tier: string, readonly limit: number, readonly amount: number) {}

  /** Resolves when the lead's answer is known (and, if a denial, remembered). */
  settled(): Promise<void> {
    return (this.#settled ??= new Promise((resolve) => {
      this.#release = resolve
    }))
  }

  /** Lets the followers go (no promise exists when nobody followed). */
  end(): void {
    this.#release?.()
  }
}

export interface DenyCacheOptions {
  /** How long a denial answers. @default 1000 */
  ttlMs?: number
  /** How long an entry is kept as a hint after that. @default 60_000 */
  hintMs?: number
  /** @default 100_000 */
  max?: number
  /** Monotonic milliseconds. @default performance.now */
  now?: () => number
}

export class DenyCache {
  readonly #entries: LRUCache<string, Denial>
  /** Keys per user, so one user's entries can be dropped without a scan. */
  readonly #byUser = new Map<string, Set<string>>()
  /** Hinted decisions in flight, by key. Small: at most one per key, only for likely denials. */
  readonly #leads = new Map<string, Lead>()
  readonly #ttlMs: number
  readonly #now: () => number

  constructor(options: DenyCacheOptions = {}) {
    this.#ttlMs = options.ttlMs ?? 1000
    this.#now = options.now ?? (() => performance.now())
    this.#entries = new LRUCache({
      max: options.max ?? 100_000,
      ttl: this.#ttlMs + (options.hintMs ?? 60_000),
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

  /** The remembered denial, if fresh and `amount` (micro) would still be over the same tier's same limit. */
  check(key: string, amount: number, tier: string, limit: number | null): Denial | undefined {
    const denial = this.#matching(key, amount, tier, limit)
    return denial && denial.freshUntil > this.#now() ? denial : undefined
  }

  /**
   * For a decision about to ask the store: the lead in flight to wait for (same key, tier and
   * limit, an amount no larger), or else, when the entry hints at a denial, this decision made the
   * lead (`led`; the caller must `end` it once its answer is remembered). Undefined for both when
   * there is nothing to share: the common, admitted case costs one lookup.
   */
  coalesce(key: string, amount: number, tier: string, limit: number | null): { follow?: Lead; led?: Lead } | undefined {
    if (limit === null) return undefined
    const lead = this.#leads.get(key)
    if (lead) {
      return !lead.stale && lead.tier === tier && lead.limit === limit && lead.amount <= amount ? { follow: lead } : undefined
    }
    if (!this.#matching(key, amount, tier, limit)) return undefined
    const led = new Lead(key, tier, limit, amount)
    this.#leads.set(key, led)
    return { led }
  }

  /** Ends a lead: its followers go on (to the deny cache, then to the store). */
  end(lead: Lead): void {
    if (this.#leads.get(lead.key) === lead) this.#leads.delete(lead.key)
    lead.end()
  }

  /** Remembers a fresh denial (not one a forgotten lead brought back: it may predate the refund). */
  remember(userId: string, key: string, observed: Observed, lead?: Lead): void {
    if (lead?.stale) return
    this.#set(userId, key, { tier: observed.tier, current: observed.current, limit: observed.limit, freshUntil: this.#now() + this.#ttlMs })
  }

  /**
   * Keeps, as a hint only, an admission that left less than its amount: the same call next is
   * likely denied. Never replaces a fresh denial.
   */
  hint(userId: string, key: string, observed: Observed): void {
    const existing = this.#entries.get(key)
    if (existing && existing.freshUntil > this.#now()) return
    this.#set(userId, key, { tier: observed.tier, current: observed.current, limit: observed.limit, freshUntil: 0 })
  }

  /** Drops one user's entries, or everyone's (null); leads in flight for them share nothing. */
  forget(userId: string | null): void {
    if (userId === null) {
      this.#entries.clear()
      this.#byUser.clear()
      for (const lead of this.#leads.values()) lead.stale = true
      this.#leads.clear()
      return
    }
    for (const key of [...(this.#byUser.get(userId) ?? [])]) this.#entries.delete(key)
    if (this.#leads.size === 0) return
    const prefix = `${userId}|`
    for (const [key, lead] of this.#leads) {
      if (!key.startsWith(prefix)) continue
      lead.stale = true
      this.#leads.delete(key)
    }
  }

  get size(): number {
    return this.#entries.size
  }

  /** The entry (fresh or hint) for the same tier and limit under which `amount` is over the limit. */
  #matching(key: string, amount: number, tier: string, limit: number | null): Denial | undefined {
    // Most traffic is admitted and most processes remember no denial: no lookup.
    if (limit === null || this.#entries.size === 0) return undefined
    const denial = this.#entries.get(key)
    if (!denial || denial.tier !== tier || denial.limit !== limit) return undefined
    return denial.current + amount > denial.limit ? denial : undefined
  }

  #set(userId: string, key: string, denial: Denial): void {
    this.#entries.set(key, denial)
    let keys = this.#byUser.get(userId)
    if (!keys) this.#byUser.set(userId, (keys = new Set()))
    keys.add(key)
  }
}

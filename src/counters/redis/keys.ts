/**
 * Redis key layout (version 2). Every key of one user lives in one "bucket" whose hash tag is
 * `{<bucket>}`, so a script touching a user's day, idempotency keys and the bucket's marks and
 * epoch stays in one hash slot and runs unchanged on Redis Cluster. Within a bucket, users are
 * spread over SHARDS "shards": a day's counters of one shard are one small hash (listpack-encoded
 * while it holds at most `hash-max-listpack-entries` users), so a user-day costs one hash entry
 * instead of a key of its own, and a decision reads and writes one field.
 *
 *   <prefix>{<b>}:u:<YYYY-MM-DD>:<shard>  hash    "<user>" -> "d,a,c,s,v,f" (micro-units; v: version,
 *                                                f: version last written to Postgres), "#" -> number of
 *                                                users with v > f; expires 2 days after its day
 *   <prefix>{<b>}:marks                   zset    "<day>:<shard>" -> ms of the first unflushed change of
 *                                                any user of that shard-day
 *   <prefix>{<b>}:g:<shard>:<period>      hash    "<user>" -> storage gauge (micro-units) of the users
 *                                                active in that period of GAUGE_PERIOD_DAYS days;
 *                                                also "this Redis knows the user"; expires a day
 *                                                after the next period ends
 *   <prefix>{<b>}:i:<user>:<key>          string  stored result of an idempotent call; 24 h
 *   <prefix>{<b>}:ik:<user>               zset    the user's live idempotency keys -> ms each expires
 *   <prefix>{<b>}:ipend                   zset    "<user>:<key>" -> ms stored: idempotent answers the
 *                                                flusher has not copied to Postgres yet
 *   <prefix>{<b>}:h:<YYYY-MM-DD>:<user>   hash    the user's reservations of that day: "<id>" -> open hold
 *                                                or a settled one's answer; lives as long as the day's hash
 *   <prefix>{<b>}:cross                   zset    threshold crossings not yet copied to Postgres
 *                                                ("<user>|<day>|<metric>|<percent>|<value>|<limit>" -> ms)
 *   <prefix>{<b>}:epoch                   string  ms when this bucket's state was (re)built in this Redis
 *
 * Version 1's keys (a hash per user-day, a gauge per user, a dirty set of user-days) are named in
 * legacy-v1.ts: a store of this version drains and migrates them (docs/architecture.md, §6).
 */
import { BUCKETS, userHash } from '../buckets.ts'

import type { MetricName } from '../../metrics.ts'

/**
 * Position of a metric in a user's value "d,a,c,s,v,f" (1-based, as Lua counts). Only this
 * folder knows them.
 */
export const POSITION: Readonly<Record<MetricName, 1 | 2 | 3 | 4>> = {
  deployments: 1,
  api_calls: 2,
  compute_hours: 3,
  storage: 4,
}

/**
 * Shards per bucket: 64 × 32 = 2048 hashes per day. Up to about 200 000 users active in a day each
 * hash stays under Redis' default `hash-max-listpack-entries` (128) and keeps the compact
 * encoding; past that, hashes turn into ordinary hash tables: still one entry per user-day, about
 * 40 % larger (docs/architecture.md, §6, has the arithmetic and the setting that moves the bound).
 * Part of the layout: changing it moves users between hashes, so it is a new layout version.
 */
export const SHARDS = 32

/**
 * Gauges are kept per period of this many days (day number since 1970 / 16). A decision reads the
 * current and the previous period, and a user's first write of a day copies the gauge into the
 * current one: a user away up to 16 days (at least; up to 32) is known without Postgres, one away
 * longer is rebuilt from daily_usage like lost state. Part of the layout.
 */
export const GAUGE_PERIOD_DAYS = 16
const DAY_MS = 86_400_000

/** The gauge period of a day (YYYY-MM-DD). */
export function gaugePeriod(day: string): number {
  return Math.floor(Date.parse(`${day}T00:00:00Z`) / DAY_MS / GAUGE_PERIOD_DAYS)
}

/** Seconds a new gauges hash of `period` lives from `now`: until a day after the next period ends. */
export function gaugeTtlSeconds(period: number, now: number): number {
  return Math.max(60, Math.ceil(((period + 2) * GAUGE_PERIOD_DAYS * DAY_MS + DAY_MS - now) / 1000))
}

/** The bucket a user's keys live in (its hash tag `{b}`): one slot per bucket. */
export { BUCKETS, bucketOf } from '../buckets.ts'

/** Where a user's counters live: bucket (the hash tag) and shard within it. */
export interface UserSlot {
  readonly bucket: number
  readonly shard: number
}

/** Where a user's keys live with `buckets` buckets (REDIS_BUCKETS; the layout's default 64). */
export function slotOf(userId: string, buckets: number = BUCKETS): UserSlot {
  const hash = userHash(userId)
  return { bucket: hash % buckets, shard: Math.floor(hash / buckets) % SHARDS }
}

/** Most buckets a key space may have: one per hash slot of a Redis Cluster. */
export const MAX_BUCKETS = 16_384

export class KeySpace {
  /**
   * `buckets`: how many hash tags (so cluster slots) users are spread over. Changing it moves
   * users between buckets: see docs/scaling.md for the safe way (a flushed stop and a new prefix).
   */
  constructor(readonly prefix: string, readonly buckets: number = BUCKETS) {
    if (!Number.isInteger(buckets) || buckets < 1 || buckets > MAX_BUCKETS) {
      throw new RangeError(`buckets must be a whole number from 1 to ${MAX_BUCKETS}, got ${buckets}`)
    }
  }

  slotOf(userId: string): UserSlot {
    return slotOf(userId, this.buckets)
  }

  tag(bucket: number): string {
    return `${this.prefix}{${bucket}}`
  }

  /** The hash of one shard's users for one day. */
  shardDay(bucket: number, shard: number, day: string): string {
    return `${this.tag(bucket)}:u:${day}:${shard}`
  }

  /** The hash holding a user's counters of `day`. */
  userDay(userId: string, day: string, slot: UserSlot = this.slotOf(userId)): string {
    return this.shardDay(slot.bucket, slot.shard, day)
  }

  /** The storage gauges of a shard's users active in `period` (gaugePeriod). */
  gauges(bucket: number, shard: number, period: number): string {
    return `${this.tag(bucket)}:g:${shard}:${period}`
  }

  /** The bucket's dirty marks, one per shard-day with unflushed changes. */
  marks(bucket: number): string {
    return `${this.tag(bucket)}:marks`
  }

  idempotency(userId: string, key: string, bucket = this.slotOf(userId).bucket): string {
    return `${this.tag(bucket)}:i:${userId}:${key}`
  }

  /**
   * The user's live idempotency keys. decide.lua takes a key's member from its idempotency()
   * name by length: "<tag>:i:<user>:" is exactly as long as this name.
   */
  idempotencyIndex(userId: string, bucket = this.slotOf(userId).bucket): string {
    return `${this.tag(bucket)}:ik:${userId}`
  }

  /** The bucket's outbox of idempotent answers not yet copied to Postgres. */
  keyOutbox(bucket: number): string {
    return `${this.tag(bucket)}:ipend`
  }

  /** The user's reservations of `day`. */
  holds(userId: string, day: string, bucket = this.slotOf(userId).bucket): string {
    return `${this.tag(bucket)}:h:${day}:${userId}`
  }

  /** The bucket's threshold crossings not yet copied to Postgres. */
  crossings(bucket: number): string {
    return `${this.tag(bucket)}:cross`
  }

  epoch(bucket: number): string {
    return `${this.tag(bucket)}:epoch`
  }
}

/** A shard-day's mark in the bucket's marks: "<day>:<shard>". */
export function markMember(day: string, shard: number): string {
  return `${day}:${shard}`
}

export function parseMarkMember(member: string): { day: string; shard: number } {
  return { day: member.slice(0, 10), shard: Number(member.slice(11)) }
}

/** Outbox member of a user's idempotency key. UUIDs are 36 characters: the split is unambiguous. */
export function outboxMember(userId: string, key: string): string {
  return `${userId}:${key}`
}

export function parseOutboxMember(member: string): { userId: string; key: string } {
  return { userId: member.slice(0, 36), key: member.slice(37) }
}

/**
 * Redis key layout. Every key of one user lives in one "bucket" whose hash tag is `{<bucket>}`,
 * so a script touching a user's day hash, gauge, idempotency key, the bucket's dirty set and
 * epoch marker stays in one hash slot and runs unchanged on Redis Cluster.
 *
 *   <prefix>{<b>}:d:<user>:<YYYY-MM-DD>  hash  d a c s (micro-units), v (version); expires 2 days after its day
 *   <prefix>{<b>}:g:<user>               string  storage gauge in micro-units; GAUGE_TTL_S after its last write
 *   <prefix>{<b>}:i:<user>:<key>         string  stored result of an idempotent call; 24 h
 *   <prefix>{<b>}:ik:<user>              zset    the user's live idempotency keys -> ms each expires
 *   <prefix>{<b>}:dirty                  zset    "<user>:<day>" -> ms of the first unflushed change
 *   <prefix>{<b>}:ipend                  zset    "<user>:<key>" -> ms stored: idempotent answers the
 *                                                flusher has not copied to Postgres yet
 *   <prefix>{<b>}:epoch                  string  ms when this bucket's state was (re)built in this Redis
 */
import { bucketOf } from '../buckets.ts'

import type { MetricName } from '../../metrics.ts'

/** Field of a metric in the day hash: one letter keeps the hash small. Only this folder knows them. */
export const FIELD: Readonly<Record<MetricName, 'd' | 'a' | 'c' | 's'>> = {
  deployments: 'd',
  api_calls: 'a',
  compute_hours: 'c',
  storage: 's',
}

/**
 * Lifetime of a storage gauge after its last write (every storage change, and the first change
 * of each day, renew it): 35 days. Without one, the gauge of a user gone for good would stay in
 * Redis forever. Nothing is lost when it expires: the gauge's value is in daily_usage (every
 * write is flushed within seconds, and the midnight job carries it into each new day), and a
 * missing gauge reads as lost state, which the next decision rebuilds from the latest
 * storage_gb before deciding.
 */
export const GAUGE_TTL_S = 35 * 86_400

/** The bucket a user's keys live in (its hash tag `{b}`): one slot per bucket. */
export { BUCKETS, bucketOf } from '../buckets.ts'

export class KeySpace {
  constructor(readonly prefix: string) {}

  tag(bucket: number): string {
    return `${this.prefix}{${bucket}}`
  }

  day(userId: string, day: string, bucket = bucketOf(userId)): string {
    return `${this.tag(bucket)}:d:${userId}:${day}`
  }

  gauge(userId: string, bucket = bucketOf(userId)): string {
    return `${this.tag(bucket)}:g:${userId}`
  }

  idempotency(userId: string, key: string, bucket = bucketOf(userId)): string {
    return `${this.tag(bucket)}:i:${userId}:${key}`
  }

  /**
   * The user's live idempotency keys. decide.lua takes a key's member from its idempotency()
   * name by length: "<tag>:i:<user>:" is exactly as long as this name.
   */
  idempotencyIndex(userId: string, bucket = bucketOf(userId)): string {
    return `${this.tag(bucket)}:ik:${userId}`
  }

  /** The bucket's outbox of idempotent answers not yet copied to Postgres. */
  keyOutbox(bucket: number): string {
    return `${this.tag(bucket)}:ipend`
  }

  dirty(bucket: number): string {
    return `${this.tag(bucket)}:dirty`
  }

  epoch(bucket: number): string {
    return `${this.tag(bucket)}:epoch`
  }
}

/** Dirty-set member for a user-day. UUIDs contain no ':', so the split is unambiguous. */
export function dirtyMember(userId: string, day: string): string {
  return `${userId}:${day}`
}

export function parseDirtyMember(member: string): { userId: string; day: string } {
  const at = member.lastIndexOf(':')
  return { userId: member.slice(0, at), day: member.slice(at + 1) }
}

/** Outbox member of a user's idempotency key. UUIDs are 36 characters: the split is unambiguous. */
export function outboxMember(userId: string, key: string): string {
  return `${userId}:${key}`
}

export function parseOutboxMember(member: string): { userId: string; key: string } {
  return { userId: member.slice(0, 36), key: member.slice(37) }
}

/**
 * Marks kept per bucket, the memory store's partitions: one Map per bucket, member -> mark, read
 * oldest first as the Redis store reads its sorted sets. The dirty user-days (dirty-marks.ts) and
 * the key outbox (key-outbox.ts) are each one of these; a user falls in one bucket, by its id.
 */
import { BUCKETS } from '../buckets.ts'

export { BUCKETS, bucketOf } from '../buckets.ts'

/** What every mark holds: its user, its member ("<user>:<...>") and the ms it is ordered by. */
export interface Mark {
  userId: string
  member: string
  since: number
}

function emptyBuckets<M extends Mark>(): Map<string, M>[] {
  return Array.from({ length: BUCKETS }, () => new Map<string, M>())
}

/** The marks of every bucket; dirty-marks.ts and key-outbox.ts add what their marks mean. */
export class BucketMarks<M extends Mark> {
  #buckets: Map<string, M>[] = emptyBuckets<M>()

  /** A bucket's marks; undefined for a number that names no bucket. */
  bucket(bucket: number): Map<string, M> | undefined {
    return this.#buckets[bucket]
  }

  /**
   * Up to `maxPerBucket` marks of every bucket, each as `read` makes it: oldest first, then by
   * member (the order of a sorted set, so both stores read alike).
   */
  readOldest<R>(maxPerBucket: number, read: (mark: M, bucket: number) => R): R[] {
    const out: R[] = []
    if (!(maxPerBucket > 0)) return out
    for (let bucket = 0; bucket < BUCKETS; bucket++) {
      const marks = this.#buckets[bucket] as Map<string, M>
      if (marks.size === 0) continue
      const list = [...marks.values()].sort((a, b) => a.since - b.since || (a.member < b.member ? -1 : a.member > b.member ? 1 : 0))
      const n = Math.min(list.length, maxPerBucket)
      for (let i = 0; i < n; i++) out.push(read(list[i] as M, bucket))
    }
    return out
  }

  /** The oldest `since` of all marks, or null when there is none. */
  oldest(): number | null {
    let oldest: number | null = null
    for (const marks of this.#buckets) {
      for (const mark of marks.values()) if (oldest === null || mark.since < oldest) oldest = mark.since
    }
    return oldest
  }

  /** Marks per bucket. */
  counts(): number[] {
    return this.#buckets.map((marks) => marks.size)
  }

  /** Marks in all buckets. */
  get size(): number {
    let size = 0
    for (const marks of this.#buckets) size += marks.size
    return size
  }

  clear(): void {
    this.#buckets = emptyBuckets<M>()
  }
}

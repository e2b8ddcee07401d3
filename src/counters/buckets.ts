/**
 * Buckets: the partitions every store spreads users over. The Redis store puts a bucket's keys in
 * one hash slot (`{b}`); the flusher reads and acknowledges per bucket in every store. The same
 * function everywhere, so a user falls in the same bucket whichever store holds it.
 */

/** Number of buckets. */
export const BUCKETS = 64

/** FNV-1a (32 bits) of the user id. Stable across processes and releases. */
export function userHash(userId: string): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < userId.length; i++) {
    hash ^= userId.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193)
  }
  return hash >>> 0
}

/** The user's bucket: userHash modulo BUCKETS. */
export function bucketOf(userId: string): number {
  return userHash(userId) % BUCKETS
}

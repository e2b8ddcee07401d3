/**
 * The key outbox: idempotent answers the flusher has not copied to the history yet, per bucket,
 * "<user>:<key>" -> ms stored. Copied, an answer outlives a restart: the history hands it back
 * through the key loader (history-loads.ts).
 */
import type { PendingKey } from '../store.ts'
import { BucketMarks } from './bucket-marks.ts'
import type { Mark } from './bucket-marks.ts'
import { encodeAnswer } from './idempotency.ts'
import type { UserState, UserTable } from './user-state.ts'

interface OutboxMark extends Mark {
  key: string
}

export class KeyOutbox extends BucketMarks<OutboxMark> {
  /** Puts the user's key in the outbox since `now`, unless it is there already. */
  add(user: UserState, key: string, now: number): void {
    const member = `${user.id}:${key}`
    const outbox = this.bucket(user.bucket) as Map<string, OutboxMark>
    if (!outbox.has(member)) outbox.set(member, { userId: user.id, key, member, since: now })
  }

  /** Up to `maxPerBucket` keys of every bucket, oldest first, with their answers in `users` (null: expired at `time`). */
  read(maxPerBucket: number, users: UserTable, time: number): PendingKey[] {
    return this.readOldest(maxPerBucket, (mark, bucket) => {
      const record = users.get(mark.userId)?.keys?.get(mark.key)
      const live = record !== undefined && record.at > time
      return { bucket, userId: mark.userId, key: mark.key, kept: live ? { answer: encodeAnswer(record), expiresAt: record.at } : null }
    })
  }

  /** Takes keys of one bucket out (the history keeps them now). Returns how many were taken out. */
  acknowledge(bucket: number, keys: readonly { userId: string; key: string }[]): number {
    const marks = this.bucket(bucket)
    if (marks === undefined) return 0
    let removed = 0
    for (const k of keys) if (marks.delete(`${k.userId}:${k.key}`)) removed++
    return removed
  }
}

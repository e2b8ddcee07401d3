/**
 * The crossing outbox: threshold crossings (thresholds.ts) the flusher has not copied to the
 * history yet, per bucket, ref -> ms of the decision. The Redis store keeps the same refs in a
 * sorted set per bucket.
 */
import type { ThresholdCrossing } from '../store.ts'
import { crossingOf } from '../thresholds.ts'
import { BucketMarks } from './bucket-marks.ts'
import type { Mark } from './bucket-marks.ts'
import type { UserState } from './user-state.ts'

export class CrossingOutbox extends BucketMarks<Mark> {
  /** Keeps a crossing of the user's, unless the same one is kept already. */
  add(user: UserState, ref: string, now: number): void {
    const outbox = this.bucket(user.bucket) as Map<string, Mark>
    if (!outbox.has(ref)) outbox.set(ref, { userId: user.id, member: ref, since: now })
  }

  /** Up to `maxPerBucket` crossings of every bucket, oldest first. */
  read(maxPerBucket: number): ThresholdCrossing[] {
    return this.readOldest(maxPerBucket, (mark, bucket) => crossingOf(bucket, mark.member, mark.since))
      .filter((c): c is ThresholdCrossing => c !== undefined)
  }

  /** Takes crossings of one bucket out (the history keeps them now). Returns how many were taken out. */
  acknowledge(bucket: number, refs: readonly string[]): number {
    const marks = this.bucket(bucket)
    if (marks === undefined) return 0
    let removed = 0
    for (const ref of refs) if (marks.delete(ref)) removed++
    return removed
  }
}

/**
 * The dirty marks: user-days changed since they were last written to the history, per bucket,
 * "<user>:<day>" -> ms of the first unwritten change. The flusher reads them oldest first, with
 * each day's state as it is now, and acknowledges what it wrote.
 */
import type { DirtyUserDay, WrittenUserDay } from '../store.ts'
import { BucketMarks } from './bucket-marks.ts'
import type { Mark } from './bucket-marks.ts'
import { countsOf } from './user-state.ts'
import type { DayState, UserState, UserTable } from './user-state.ts'

interface DirtyMark extends Mark {
  day: string
}

export class DirtyMarks extends BucketMarks<DirtyMark> {
  /** Marks a user-day dirty since `now`, unless it is marked already (then the older time stays). */
  mark(user: UserState, state: DayState, now: number): void {
    const member = (state.member ??= `${user.id}:${state.day}`)
    const marks = this.bucket(user.bucket) as Map<string, DirtyMark>
    if (!marks.has(member)) marks.set(member, { userId: user.id, day: state.day, member, since: now })
    state.dirty = true
  }

  /** Up to `maxPerBucket` dirty user-days of every bucket, oldest first, with their state in `users` at `time`. */
  read(maxPerBucket: number, users: UserTable, time: number): DirtyUserDay[] {
    return this.readOldest(maxPerBucket, (mark, bucket) => {
      const state = users.liveDay(mark.userId, mark.day, time)
      return {
        bucket, userId: mark.userId, day: mark.day, since: mark.since,
        state: state === undefined ? null : { counts: countsOf(state), version: state.version },
      }
    })
  }

  /**
   * Takes written user-days of one bucket off, unless they changed (in `users`) since their
   * version: those stay, dirty since `readAt` (when given). Returns how many were taken off.
   */
  acknowledge(bucket: number, written: readonly WrittenUserDay[], readAt: number, users: UserTable, time: number): number {
    const marks = this.bucket(bucket)
    if (marks === undefined) return 0
    let removed = 0
    for (const w of written) {
      const member = `${w.userId}:${w.day}`
      const mark = marks.get(member)
      const state = users.liveDay(w.userId, w.day, time)
      if (state === undefined || state.version <= w.version) {
        if (mark !== undefined) {
          marks.delete(member)
          removed++
        }
        if (state !== undefined) state.dirty = false
      } else if (readAt > 0 && mark !== undefined && readAt > mark.since) {
        // Changed since it was read: stays dirty, but only since the read (what was read is written).
        mark.since = readAt
      }
    }
    return removed
  }
}

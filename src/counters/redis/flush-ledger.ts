/**
 * The flusher's side of the Redis store: which user-days wait for Postgres and what they hold
 * (the bucket's marks, read.lua), their acknowledgement once written (ack.lua), the sweep that
 * puts back lost marks (repair-marks.lua), the drain of layout version 1's dirty sets while an
 * upgrade runs (legacy-v1.ts), and the outboxes of idempotent answers and threshold crossings. Everything here runs on the
 * flusher's connection, never on the decision path; RedisCounterStore delegates to it.
 */
import type { ChainableCommander } from 'ioredis'
import { execBatch } from './client.ts'
import type { RedisClient } from './client.ts'
import { mapLimited } from '../../limited.ts'
import { METRIC_NAMES } from '../../metrics.ts'
import type { DirtyUserDay, MetricCounts, PendingKey, ThresholdCrossing, WrittenUserDay } from '../store.ts'
import { crossingOf } from '../thresholds.ts'
import { classify } from './errors.ts'
import { SHARDS, markMember, outboxMember, parseMarkMember, parseOutboxMember } from './keys.ts'
import type { KeySpace } from './keys.ts'
import { legacyV1 } from './legacy-v1.ts'
import { SCRIPTS } from './scripts.ts'

/** How often readDirty also sweeps for lost marks (repair-marks.lua). */
export const MARK_REPAIR_INTERVAL_MS = 30_000
/** Days whose marks the sweep checks: the latest ones decisions were made on. */
const RECENT_DAYS = 3
/** The flusher's bucket scripts in flight at once (see mapLimited). */
export const FLUSH_SCRIPTS_IN_FLIGHT = 2

export class FlushLedger {
  /**
   * User-days ("<user>:<day>") the last readDirty found in layout version 1 (an upgrade
   * draining): their acknowledgement goes to the v1 dirty set.
   */
  readonly #legacyRead = new Set<string>()
  /** The latest days decided on (newest last), for the lost-mark sweep. */
  readonly #recentDays: string[] = []
  #lastRepair = 0

  /** `bulk`: the flusher's connection as it is now (the store may open its own at start). */
  constructor(
    private readonly keys: KeySpace,
    private readonly bulk: () => RedisClient,
  ) {}

  /** Remembers a day decided on (cheap when it is the latest already). */
  noteDay(day: string): void {
    const days = this.#recentDays
    if (days.at(-1) === day) return
    const at = days.indexOf(day)
    if (at >= 0) days.splice(at, 1)
    days.push(day)
    if (days.length > RECENT_DAYS) days.shift()
  }

  /**
   * Puts back the marks of shard-days that hold dirty users but lost their mark, for `days`
   * (default: the latest days decided on); see repair-marks.lua. Returns how many came back.
   */
  async repairMarks(days: readonly string[] = this.#recentDays, now = Date.now()): Promise<number> {
    this.#lastRepair = Date.now()
    if (days.length === 0) return 0
    const buckets = Array.from({ length: this.keys.buckets }, (_, b) => b)
    const restored = await mapLimited(buckets, FLUSH_SCRIPTS_IN_FLIGHT, async (bucket) => {
      const keys = [this.keys.marks(bucket)]
      const args: (string | number)[] = [now]
      for (const day of days) {
        for (let shard = 0; shard < SHARDS; shard++) {
          keys.push(this.keys.shardDay(bucket, shard, day))
          args.push(markMember(day, shard))
        }
      }
      return Number(await SCRIPTS.repairMarks.run(this.bulk(), keys, args))
    })
    return restored.reduce((a, b) => a + b, 0)
  }

  async readPendingKeys(maxPerBucket: number): Promise<PendingKey[]> {
    const perBucket = await this.#perBucket((p, bucket) => p.zrange(this.keys.keyOutbox(bucket), '0', String(maxPerBucket - 1)))
    const members: Omit<PendingKey, 'kept'>[] = []
    perBucket.forEach((raw, bucket) => {
      for (const member of raw as string[]) members.push({ bucket, ...parseOutboxMember(member) })
    })
    if (members.length === 0) return []
    let replies: [Error | null, unknown][]
    try {
      replies = await execBatch(this.bulk(), (reads) => {
        for (const m of members) {
          const name = this.keys.idempotency(m.userId, m.key, m.bucket)
          reads.get(name)
          reads.pttl(name)
        }
      })
    } catch (err) {
      throw classify(err)
    }
    const readAt = Date.now()
    return members.map((m, i) => {
      const [getErr, answer] = replies[2 * i] ?? [new Error('no reply'), null]
      const [ttlErr, ttl] = replies[2 * i + 1] ?? [new Error('no reply'), null]
      if (getErr || ttlErr) throw classify(getErr ?? ttlErr)
      const alive = typeof answer === 'string' && Number(ttl) > 0
      return { ...m, kept: alive ? { answer, expiresAt: readAt + Number(ttl) } : null }
    })
  }

  async acknowledgeKeys(bucket: number, keys: readonly { userId: string; key: string }[]): Promise<number> {
    if (keys.length === 0) return 0
    try {
      return await this.bulk().zrem(this.keys.keyOutbox(bucket), ...keys.map((k) => outboxMember(k.userId, k.key)))
    } catch (err) {
      throw classify(err)
    }
  }

  /**
   * Up to about `maxPerBucket` dirty user-days of every bucket, oldest shard-day first, with
   * their current values: one pipeline of ZRANGE (the marks, and the dirty sets of layout
   * version 1 while an upgrade drains them), then one read.lua call per bucket (its keys share
   * the slot). Whole shard-days are read, so a bucket may give a few more than `maxPerBucket`.
   */
  async readDirty(maxPerBucket: number): Promise<DirtyUserDay[]> {
    if (Date.now() - this.#lastRepair >= MARK_REPAIR_INTERVAL_MS) await this.repairMarks()
    const replies = await this.#perBucket((p, bucket) => {
      p.zrange(this.keys.marks(bucket), '0', String(maxPerBucket - 1), 'WITHSCORES')
      p.zrange(legacyV1.dirty(this.keys, bucket), '0', String(maxPerBucket - 1), 'WITHSCORES')
    })
    const work: { bucket: number; marks: string[]; legacy: string[] }[] = []
    for (let bucket = 0; bucket < this.keys.buckets; bucket++) {
      const marks = replies[2 * bucket] as string[]
      const legacy = replies[2 * bucket + 1] as string[]
      if (marks.length > 0 || legacy.length > 0) work.push({ bucket, marks, legacy })
    }
    const out: DirtyUserDay[] = []
    await mapLimited(work, FLUSH_SCRIPTS_IN_FLIGHT, async ({ bucket, marks, legacy }) => {
      if (marks.length > 0) out.push(...await this.#readMarked(bucket, marks, maxPerBucket))
      if (legacy.length > 0) out.push(...await this.#readLegacy(bucket, legacy))
    })
    return out
  }

  /** The dirty user-days of a bucket's marked shard-days (`marks`: member, score, ...). */
  async #readMarked(bucket: number, marks: readonly string[], limit: number): Promise<DirtyUserDay[]> {
    const shardDays: { day: string; since: number }[] = []
    const keys = [this.keys.marks(bucket)]
    const args: (string | number)[] = [limit]
    for (let i = 0; i < marks.length; i += 2) {
      const member = marks[i] as string
      const { day, shard } = parseMarkMember(member)
      shardDays.push({ day, since: Number(marks[i + 1]) })
      keys.push(this.keys.shardDay(bucket, shard, day))
      args.push(member)
    }
    const perHash = String(await SCRIPTS.read.run(this.bulk(), keys, args)).split('|')
    const out: DirtyUserDay[] = []
    shardDays.forEach(({ day, since }, i) => {
      const rows = perHash[i]
      if (!rows || rows === '~') return
      for (const row of rows.split(';')) {
        const comma = row.indexOf(',')
        out.push({ bucket, userId: row.slice(0, comma), day, since, state: parseCounts(row.slice(comma + 1)) })
      }
    })
    return out
  }

  /** User-days still in layout version 1's dirty set (`members`: member, score, ...). */
  async #readLegacy(bucket: number, members: readonly string[]): Promise<DirtyUserDay[]> {
    const list: Omit<DirtyUserDay, 'state'>[] = []
    for (let i = 0; i < members.length; i += 2) {
      list.push({ bucket, ...legacyV1.parseMember(members[i] as string), since: Number(members[i + 1]) })
    }
    const keys = list.map((m) => legacyV1.day(this.keys, bucket, m.userId, m.day))
    const rows = String(await SCRIPTS.legacyRead.run(this.bulk(), keys, [])).split(';')
    return list.map((m, i) => {
      this.#legacyRead.add(legacyV1.member(m.userId, m.day))
      const row = rows[i] ?? '-'
      return { ...m, state: row === '-' ? null : parseCounts(row) }
    })
  }

  async acknowledge(bucket: number, written: readonly WrittenUserDay[], readAt = 0): Promise<number> {
    if (written.length === 0) return 0
    const byHash = new Map<string, { member: string; pairs: (string | number)[] }>()
    const legacy: WrittenUserDay[] = []
    for (const w of written) {
      if (this.#legacyRead.delete(legacyV1.member(w.userId, w.day))) {
        legacy.push(w)
        continue
      }
      const { shard } = this.keys.slotOf(w.userId)
      const hash = this.keys.shardDay(bucket, shard, w.day)
      let entry = byHash.get(hash)
      if (!entry) {
        entry = { member: markMember(w.day, shard), pairs: [] }
        byHash.set(hash, entry)
      }
      entry.pairs.push(w.userId, w.version)
    }
    let cleaned = 0
    if (byHash.size > 0) {
      const args: (string | number)[] = [readAt]
      for (const { member, pairs } of byHash.values()) args.push(member, pairs.length / 2, ...pairs)
      cleaned += Number(await SCRIPTS.ack.run(this.bulk(), [this.keys.marks(bucket), ...byHash.keys()], args))
    }
    if (legacy.length > 0) {
      const keys = [legacyV1.dirty(this.keys, bucket), ...legacy.map((w) => legacyV1.day(this.keys, bucket, w.userId, w.day))]
      const args = [readAt, ...legacy.flatMap((w) => [legacyV1.member(w.userId, w.day), w.version])]
      cleaned += Number(await SCRIPTS.legacyAck.run(this.bulk(), keys, args))
    }
    return cleaned
  }

  async oldestDirty(): Promise<number | null> {
    let oldest: number | null = null
    const replies = await this.#perBucket((p, bucket) => {
      p.zrange(this.keys.marks(bucket), '0', '0', 'WITHSCORES')
      p.zrange(legacyV1.dirty(this.keys, bucket), '0', '0', 'WITHSCORES')
    })
    for (const flat of replies) {
      const pair = flat as string[]
      if (pair.length >= 2) {
        const since = Number(pair[1])
        if (oldest === null || since < oldest) oldest = since
      }
    }
    return oldest
  }

  /**
   * Dirty user-days per bucket: the "#" of each marked shard-day (two pipelines), plus what
   * layout version 1 still holds.
   */
  async dirtyCounts(): Promise<number[]> {
    const replies = await this.#perBucket((p, bucket) => {
      p.zrange(this.keys.marks(bucket), '0', '-1')
      p.zcard(legacyV1.dirty(this.keys, bucket))
    })
    const counts = Array.from({ length: this.keys.buckets }, (_, bucket) => Number(replies[2 * bucket + 1]))
    const hashes: { bucket: number; key: string }[] = []
    for (let bucket = 0; bucket < this.keys.buckets; bucket++) {
      for (const member of replies[2 * bucket] as string[]) {
        const { day, shard } = parseMarkMember(member)
        hashes.push({ bucket, key: this.keys.shardDay(bucket, shard, day) })
      }
    }
    if (hashes.length === 0) return counts
    let dirty: [Error | null, unknown][]
    try {
      dirty = await execBatch(this.bulk(), (reads) => {
        for (const h of hashes) reads.hget(h.key, '#')
      })
    } catch (err) {
      throw classify(err)
    }
    hashes.forEach((h, i) => {
      const [err, n] = dirty[i] ?? [new Error('no reply'), null]
      if (err) throw classify(err)
      counts[h.bucket] = (counts[h.bucket] ?? 0) + Number(n ?? 0)
    })
    return counts
  }

  /** Commands per bucket, in one pipeline; the replies in order. */
  /** Up to `maxPerBucket` threshold crossings of every bucket, oldest first (decide.lua adds them). */
  async readCrossings(maxPerBucket: number): Promise<ThresholdCrossing[]> {
    if (!(maxPerBucket > 0)) return []
    const perBucket = await this.#perBucket((p, bucket) => p.zrange(this.keys.crossings(bucket), '0', String(maxPerBucket - 1), 'WITHSCORES'))
    const out: ThresholdCrossing[] = []
    perBucket.forEach((raw, bucket) => {
      const flat = raw as string[]
      for (let i = 0; i < flat.length; i += 2) {
        const crossing = crossingOf(bucket, flat[i] as string, Number(flat[i + 1]))
        if (crossing !== undefined) out.push(crossing)
      }
    })
    return out
  }

  /** Takes crossings of one bucket off once Postgres has them. */
  async acknowledgeCrossings(bucket: number, refs: readonly string[]): Promise<number> {
    if (refs.length === 0) return 0
    try {
      return await this.bulk().zrem(this.keys.crossings(bucket), ...refs)
    } catch (err) {
      throw classify(err)
    }
  }

  async #perBucket(command: (pipeline: ChainableCommander, bucket: number) => void): Promise<unknown[]> {
    try {
      const replies = await execBatch(this.bulk(), (pipeline) => {
        for (let b = 0; b < this.keys.buckets; b++) command(pipeline, b)
      })
      return replies.map(([err, reply]) => {
        if (err) throw err
        return reply
      })
    } catch (err) {
      throw classify(err)
    }
  }
}

/** Counts "d,a,c,s,v" — registry order, then the version — as read.lua and legacy-v1-read.lua return them. */
function parseCounts(row: string): NonNullable<DirtyUserDay['state']> {
  const values = row.split(',').map(Number)
  const counts = {} as MetricCounts
  METRIC_NAMES.forEach((m, i) => {
    counts[m] = values[i] ?? 0
  })
  return { counts, version: values[4] ?? 0 }
}

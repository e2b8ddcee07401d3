/**
 * The key layout of version 1, which a running deployment may still hold when it upgrades. A
 * store of this version never writes it; it only drains it:
 * - the flusher keeps reading the v1 dirty sets and writing their user-days to Postgres (the
 *   version guard makes a repeated write harmless), then takes the marks off;
 * - seed.lua, which runs whenever a user has no counters in the current layout, moves the user's
 *   v1 day (and storage gauge) into the current layout in the same script, deleting it there.
 * What is left expires by itself (day hashes 2 days after their day, gauges after 35 days).
 *
 *   <prefix>{<b>}:d:<user>:<YYYY-MM-DD>  hash    d a c s (micro-units), v (version)
 *   <prefix>{<b>}:g:<user>               string  storage gauge, micro-units
 *   <prefix>{<b>}:dirty                  zset    "<user>:<day>" -> ms of the first unflushed change
 */
import type { KeySpace } from './keys.ts'

export const legacyV1 = {
  day: (keys: KeySpace, bucket: number, userId: string, day: string): string => `${keys.tag(bucket)}:d:${userId}:${day}`,
  gauge: (keys: KeySpace, bucket: number, userId: string): string => `${keys.tag(bucket)}:g:${userId}`,
  dirty: (keys: KeySpace, bucket: number): string => `${keys.tag(bucket)}:dirty`,
  /** Dirty-set member of a user-day. */
  member: (userId: string, day: string): string => `${userId}:${day}`,
  parseMember(member: string): { userId: string; day: string } {
    const at = member.lastIndexOf(':')
    return { userId: member.slice(0, at), day: member.slice(at + 1) }
  },
}

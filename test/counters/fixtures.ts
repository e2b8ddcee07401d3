/**
 * Small shared pieces of the counter-engine tests (not a test file: tap runs *.test.ts only).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import type { KeySpace } from '../../src/counters/redis/keys.ts'
import type pg from 'pg'
import { DAY_MS, dayStart } from '../../src/clock.ts'

/**
 * Noon UTC of the real current day. The ManualClock must stay close to real time: a day hash
 * gets an absolute EXPIREAT computed from the injected clock (day start + 3 days), so a clock
 * days in the past would create keys that Redis expires at once.
 */
export function todayNoon(): string {
  return new Date(dayStart(Date.now()) + DAY_MS / 2).toISOString()
}

/** Every key under `prefix` (SCAN MATCH; tests only — the service never scans). */
export async function keysWithPrefix(redis: Redis, prefix: string): Promise<string[]> {
  const found: string[] = []
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    cursor = next
    found.push(...keys)
  } while (cursor !== '0')
  return found
}

/** Creates a user row directly (before the service first sees it), e.g. an enterprise user. */
export async function insertUser(pool: pg.Pool, id: string, tier: string): Promise<void> {
  await pool.query('INSERT INTO users (id, username, tier) VALUES ($1, $2, $3)', [id, id, tier])
}

/**
 * Polls `probe` every `intervalMs` until it returns true; returns the milliseconds it took, or
 * throws after `timeoutMs`.
 */
export async function pollUntil(probe: () => Promise<boolean>, timeoutMs: number, what: string, intervalMs = 10): Promise<number> {
  const start = Date.now()
  for (;;) {
    if (await probe()) return Date.now() - start
    if (Date.now() - start > timeoutMs) throw new Error(`${what}: not true after ${timeoutMs} ms`)
    await sleep(intervalMs)
  }
}

/** A user's entry of a day in the Redis layout: its shard-day hash and its field there. */
export interface UserDayRef {
  readonly hash: string
  readonly user: string
}

export function dayRef(store: { keys: KeySpace }, user: string, day: string): UserDayRef {
  return { hash: store.keys.userDay(user, day), user }
}

/** Letters of the entry "d,a,c,s,v,f": the four counts, the version, the version flushed. */
const ENTRY = ['d', 'a', 'c', 's', 'v', 'f'] as const

/** One number of a user's entry (0 when the user has none that day). */
export async function hfield(redis: Redis, ref: UserDayRef, field: (typeof ENTRY)[number]): Promise<number> {
  const raw = await redis.hget(ref.hash, ref.user)
  return raw === null ? 0 : Number(raw.split(',')[ENTRY.indexOf(field)])
}

/** Calls per command from INFO commandstats ("evalsha", "hmget", ...). */
export function parseCommandStats(info: string): Record<string, number> {
  const stats: Record<string, number> = {}
  for (const line of info.split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim())
    if (m?.[1] && m[2]) stats[m[1]] = Number(m[2])
  }
  return stats
}

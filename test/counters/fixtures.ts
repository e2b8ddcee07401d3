/**
 * Small shared pieces of the counter-engine tests (not a test file: tap runs *.test.ts only).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
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

/** A hash field as a number (0 when absent). */
export async function hfield(redis: Redis, key: string, field: string): Promise<number> {
  return Number((await redis.hget(key, field)) ?? 0)
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

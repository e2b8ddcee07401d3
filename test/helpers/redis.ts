/**
 * Redis for tests. The machine's Redis (127.0.0.1:6379) is shared with other test files and other
 * people, so nothing here flushes a database: each caller gets its own key prefix (give it to the
 * service as REDIS_KEY_PREFIX) and teardown deletes only the keys under it.
 */
import { randomBytes } from 'node:crypto'
import { basename } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import type { Teardownable } from './database.ts'

export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

/**
 * A unique key prefix, `qt:<pid>:<random>:`. It holds no braces, so keys built as
 * `<prefix>{user}:...` keep their hash tag, and no glob characters, so `SCAN MATCH <prefix>*`
 * matches exactly our keys.
 */
export function testRedisPrefix(): string {
  // The test file's name in the prefix tells, should keys ever be left behind, which file left them.
  const file = basename(process.argv[1] ?? 'node').replace(/\.test\.ts$/, '').replace(/[^\w-]/g, '')
  return `qt:${file}:${process.pid}:${randomBytes(4).toString('hex')}:`
}

/** An ioredis client that also carries the key prefix reserved for its test. */
export type TestRedis = Redis & {
  /** The caller's key prefix; everything under it is deleted at teardown. */
  readonly prefix: string
  /** Deletes every key under `prefix` now (also done at teardown). */
  cleanup(): Promise<number>
}

/**
 * Deletes every key matching `prefix*`. SCAN + UNLINK is fine in tests; the service itself never
 * scans (DESIGN.md invariant 6).
 */
export async function deleteKeysWithPrefix(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0'
  let deleted = 0
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    cursor = next
    if (keys.length > 0) deleted += await redis.unlink(...keys)
  } while (cursor !== '0')
  return deleted
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return Promise.race([
    promise,
    sleep(ms, undefined, { ref: false }).then(() => {
      throw new Error(`timed out after ${ms} ms`)
    }),
  ])
}

/**
 * QUIT, but never hangs: against a stopped server ioredis may wait for a reconnect that never
 * comes, so after a short grace the socket is simply dropped.
 */
export async function closeRedis(redis: Redis): Promise<void> {
  if (redis.status === 'end') return
  await withTimeout(redis.quit(), 1000).catch(() => {})
  redis.disconnect()
}

/**
 * A client on `url` (default: the shared Redis) with a fresh prefix. With `t`, its keys are
 * deleted and the client quits when `t` ends. Returns synchronously: ioredis queues commands
 * until it is connected.
 */
export function createTestRedis(t?: Teardownable, url: string = TEST_REDIS_URL, prefix: string = testRedisPrefix()): TestRedis {
  // Fail fast in tests instead of ioredis' default of retrying a dead server for a long time.
  const redis = new Redis(url, { maxRetriesPerRequest: 2, connectTimeout: 5000 }) as TestRedis
  // Without a listener an 'error' event (server stopped by a fault test) would be unhandled.
  redis.on('error', () => {})
  Object.defineProperty(redis, 'prefix', { value: prefix, enumerable: true })
  Object.defineProperty(redis, 'cleanup', { value: () => deleteKeysWithPrefix(redis, prefix) })
  t?.teardown(async () => {
    // Best effort: a test that stopped the server on purpose must not fail its teardown.
    await withTimeout(deleteKeysWithPrefix(redis, prefix), 5000).catch(() => {})
    await closeRedis(redis)
  })
  return redis
}

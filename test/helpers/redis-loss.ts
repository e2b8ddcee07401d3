/**
 * The Redis-loss scenario of the process tests: the real service on its own database and on a
 * throwaway redis-server without persistence, so that killing and starting it again is a blank
 * Redis — what a restart without AOF does to production.
 */
import { createTestDatabase } from './database.ts'
import type { Teardownable, TestDatabase } from './database.ts'
import { waitUntil } from './net.ts'
import { startRedisServer } from './redis-server.ts'
import type { RedisServer } from './redis-server.ts'
import { testRedisPrefix } from './redis.ts'
import { startService } from './service-process.ts'
import type { ServiceProcess } from './service-process.ts'

export interface RedisLossSetup {
  db: TestDatabase
  redisServer: RedisServer
  svc: ServiceProcess
  /** SIGKILLs Redis, starts it again empty, and waits until the service decides again. */
  loseRedis(): Promise<void>
}

export async function serviceOnThrowawayRedis(t: Teardownable, env: Record<string, string> = {}): Promise<RedisLossSetup> {
  const db = await createTestDatabase(t)
  const redisServer = await startRedisServer(t) // no AOF, no RDB: a restart is a blank Redis
  const svc = await startService(t, {
    DATABASE_URL: db.url,
    REDIS_URL: redisServer.url,
    REDIS_KEY_PREFIX: testRedisPrefix(),
    ...env,
  })
  const loseRedis = async (): Promise<void> => {
    await redisServer.kill('SIGKILL')
    await redisServer.start()
    // The service's client reconnects by itself; wait until it decides again.
    await waitUntil(async () => {
      const res = await fetch(`${svc.baseUrl}/ready`, { signal: AbortSignal.timeout(2000) })
      await res.arrayBuffer()
      return res.status === 200
    }, { what: '/ready after the Redis restart', timeoutMs: 10_000, intervalMs: 100 })
  }
  return { db, redisServer, svc, loseRedis }
}

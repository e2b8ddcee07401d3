/**
 * `buildTestApp(t)`: the whole service (buildApp) on its own database and Redis key prefix, with a
 * ManualClock and a known JWT secret, for `inject` tests. Tokens for users and admins come with it.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.ts'
import type { BuildAppOptions } from '../../src/app.ts'
import { ManualClock } from '../../src/clock.ts'
import { loadConfig } from '../../src/config.ts'
import type { Config } from '../../src/config.ts'
import { createTestDatabase } from './database.ts'
import type { Teardownable, TestDatabase } from './database.ts'
import { TEST_REDIS_URL, closeRedis, deleteKeysWithPrefix, testRedisPrefix } from './redis.ts'
import { signToken } from './tokens.ts'
import type { SignTokenOptions } from './tokens.ts'
import { Redis } from 'ioredis'

export interface TestApp {
  app: FastifyInstance
  config: Config
  db: TestDatabase
  clock: ManualClock
  secret: string
  prefix: string
  /** A token for `sub` (default: a new random user). */
  token(options?: Partial<SignTokenOptions>): string
  /** A new user id and its bearer header. */
  user(options?: Partial<SignTokenOptions>): { id: string; token: string; headers: Record<string, string> }
  admin(): { id: string; token: string; headers: Record<string, string> }
}

export interface TestAppOptions {
  /** Extra environment for loadConfig (e.g. USAGE_FAIL_MODE). */
  env?: Record<string, string>
  now?: string
  quota?: BuildAppOptions['quota']
  db?: TestDatabase
  /**
   * Extra routes (and hooks) registered as a plugin on the built app before `ready()`: the quota
   * decorators (`requireUsageLimit`, `config.usage`) apply to them, and anything they throw —
   * an unknown metric in a guard — makes buildTestApp reject, as start-up would.
   */
  routes?: (app: FastifyInstance) => void | Promise<void>
}

export async function buildTestApp(t: Teardownable, options: TestAppOptions = {}): Promise<TestApp> {
  const db = options.db ?? (await createTestDatabase(t))
  const secret = randomBytes(32).toString('base64url')
  const prefix = testRedisPrefix()
  const config = loadConfig({
    DATABASE_URL: db.url,
    REDIS_URL: TEST_REDIS_URL,
    REDIS_KEY_PREFIX: prefix,
    JWT_SECRET: secret,
    LOG_LEVEL: 'silent',
    ...options.env,
  })
  const clock = new ManualClock(options.now ?? '2026-11-28T12:00:00.000Z')
  const app = await buildApp({ config, clock, logger: false, quota: { scheduler: false, checkRedisSettings: false, ...options.quota } })
  // Before ready(): a start-up failure (the case tests of `routes` provoke) still closes the app.
  t.teardown(async () => {
    await app.close().catch(() => {})
    const cleaner = new Redis(TEST_REDIS_URL)
    cleaner.on('error', () => {})
    await deleteKeysWithPrefix(cleaner, prefix).catch(() => {})
    await closeRedis(cleaner)
  })
  const { routes } = options
  if (routes) {
    await app.register(async (instance) => {
      await routes(instance)
    })
  }
  await app.ready()
  const token = (o: Partial<SignTokenOptions> = {}): string => signToken({ sub: randomUUID(), secret, ...o })
  const user = (o: Partial<SignTokenOptions> = {}) => {
    const id = o.sub ?? randomUUID()
    const tok = token({ ...o, sub: id })
    return { id, token: tok, headers: { authorization: `Bearer ${tok}` } }
  }
  return { app, config, db, clock, secret, prefix, token, user, admin: () => user({ role: 'admin' }) }
}

/**
 * buildApp for the HTTP tests: a config from an env (a fresh 32-byte JWT_SECRET, a unique Redis
 * key prefix, the test's own database), logging off, closed (then the database dropped) when the
 * test ends. Not a test file itself (tap runs *.test.ts only).
 */
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { Redis } from 'ioredis'
import { buildApp } from '../../src/app.ts'
import { loadConfig } from '../../src/config.ts'
import type { Config } from '../../src/config.ts'
import type { Pool } from '../../src/db/client.ts'
import { createTestDatabase } from '../helpers/database.ts'
import type { TestDatabase } from '../helpers/database.ts'
import { testRedisPrefix } from '../helpers/redis.ts'

export interface Teardown {
  teardown(fn: () => unknown): void
}

export interface TestApp {
  app: FastifyInstance
  config: Config
  /** The HS256 secret tokens must be signed with (unless JWT_PUBLIC_KEY was given). */
  secret: string
  /** The test's database, when one was asked for. */
  db?: TestDatabase
}

export interface TestAppOptions {
  /** Environment on top of the defaults (JWT_SECRET, REDIS_KEY_PREFIX, LOG_LEVEL). */
  env?: Record<string, string>
  /** Create (and later drop) a migrated database and point DATABASE_URL at it. @default true */
  database?: boolean
  redis?: Redis
  pool?: Pool
  /** Add test routes before the app is ready. */
  routes?: (app: FastifyInstance) => void
}

export async function buildTestApp(t: Teardown, options: TestAppOptions = {}): Promise<TestApp> {
  const secret = randomBytes(32).toString('base64url')
  // Created without `t`: the app must close before its database is dropped, in that order.
  const db = options.database === false ? undefined : await createTestDatabase()
  const env: Record<string, string> = {
    JWT_SECRET: secret,
    REDIS_KEY_PREFIX: testRedisPrefix(),
    LOG_LEVEL: 'silent',
    ...(db ? { DATABASE_URL: db.url } : {}),
    ...options.env,
  }
  const config = loadConfig(env)
  let app: FastifyInstance
  try {
    app = await buildApp({ config, logger: false, redis: options.redis, pool: options.pool })
  } catch (err) {
    await db?.drop()
    throw err
  }
  t.teardown(async () => {
    await app.close()
    await db?.drop()
  })
  options.routes?.(app)
  await app.ready()
  return { app, config, secret, db }
}

/** Asserts the DESIGN 1.8 envelope and returns its `detail`. */
export function envelope(body: string): { error: string; message: string; [key: string]: unknown } {
  const parsed = JSON.parse(body) as { detail?: { error?: unknown; message?: unknown } }
  const detail = parsed.detail
  if (!detail || typeof detail.error !== 'string' || typeof detail.message !== 'string') {
    throw new Error(`not an error envelope: ${body}`)
  }
  return detail as { error: string; message: string }
}

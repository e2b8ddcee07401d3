/**
 * Configuration (DESIGN.md 1.3): defaults, and every bad value refused at start with a ConfigError
 * that names the variable — an operator reading the crash must know what to fix.
 */
import { generateKeyPairSync } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { ConfigError, DEV_SECRET_FILE, loadConfig, redactedConfig } from '../src/config.ts'

const SECRET = 'a-test-secret-that-is-long-enough-32b'

/**
 * The variable named by the ConfigError `fn` throws; anything else (no throw, another error
 * class, a message that does not name the variable) is returned as a description that fails
 * the comparison with a readable diff.
 */
function refusal(fn: () => unknown): string {
  try {
    fn()
    return '(accepted)'
  } catch (err) {
    if (!(err instanceof ConfigError)) return `(not a ConfigError: ${String(err)})`
    if (!err.message.includes(err.variable)) return `(message does not name ${err.variable}: ${err.message})`
    return err.variable
  }
}

t.test('defaults are those of DESIGN.md 1.3', async (t) => {
  const cwd = t.testdir()
  const config = loadConfig({}, { cwd })
  t.match(config, {
    port: 8000,
    host: '127.0.0.1',
    redisUrl: 'redis://127.0.0.1:6379',
    redisKeyPrefix: 'quota:',
    databaseUrl: 'postgres://postgres@127.0.0.1:5432/quota',
    usageFailMode: 'closed',
    redisCommandTimeoutMs: 250,
    flushIntervalMs: 1000,
    defaultTier: 'free',
    demoRoutes: true,
    logLevel: 'info',
    production: false,
  })
  t.equal(config.jwt.source, 'dev-secret-file')
})

t.test('valid values are read', async (t) => {
  const config = loadConfig(
    {
      PORT: '9001', HOST: '0.0.0.0', REDIS_URL: 'rediss://r.example:6380', DATABASE_URL: 'postgresql://u:p@db/q',
      JWT_SECRET: SECRET, USAGE_FAIL_MODE: 'open', REDIS_COMMAND_TIMEOUT_MS: '100', FLUSH_INTERVAL_MS: '50',
      DEFAULT_TIER: 'pro', DEMO_ROUTES: 'false', LOG_LEVEL: 'debug', REDIS_KEY_PREFIX: 'qt:1:',
    },
    { cwd: t.testdir() },
  )
  t.match(config, {
    port: 9001, host: '0.0.0.0', redisUrl: 'rediss://r.example:6380', databaseUrl: 'postgresql://u:p@db/q',
    usageFailMode: 'open', redisCommandTimeoutMs: 100, flushIntervalMs: 50, defaultTier: 'pro', demoRoutes: false,
    logLevel: 'debug', redisKeyPrefix: 'qt:1:', jwt: { secret: SECRET, source: 'JWT_SECRET' },
  })
})

t.test('each invalid value is refused with a ConfigError naming the variable', async (t) => {
  const cwd = t.testdir()
  const cases: Array<[string, string]> = [
    ['PORT', 'abc'],
    ['PORT', '70000'],
    ['REDIS_URL', 'not-a-url'],
    ['REDIS_URL', 'http://x'],
    ['DATABASE_URL', 'mysql://x'],
    ['JWT_SECRET', 'too-short-secret'],
    ['USAGE_FAIL_MODE', 'maybe'],
    ['REDIS_COMMAND_TIMEOUT_MS', '-1'],
    ['FLUSH_INTERVAL_MS', 'abc'],
    ['DEMO_ROUTES', 'perhaps'],
    ['LOG_LEVEL', 'loud'],
    ['JWT_PUBLIC_KEY', 'garbage'],
    // Looks like PEM but is not a key: must fail at start, not on the first request.
    ['JWT_PUBLIC_KEY', '-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----'],
    ['DEFAULT_TIER', 'no spaces allowed'],
    ['REDIS_KEY_PREFIX', 'has{brace}'],
  ]
  for (const [name, value] of cases) {
    // A valid secret besides, so the failure can only come from the variable under test.
    const env = name === 'JWT_SECRET' ? { [name]: value } : { JWT_SECRET: SECRET, [name]: value }
    t.equal(refusal(() => loadConfig(env, { cwd })), name, `${name}=${JSON.stringify(value)} refused`)
  }
  t.notOk(existsSync(join(cwd, DEV_SECRET_FILE)), 'no dev secret written while refusing')
})

t.test('NODE_ENV=production requires JWT_SECRET or JWT_PUBLIC_KEY', async (t) => {
  const cwd = t.testdir()
  t.equal(refusal(() => loadConfig({ NODE_ENV: 'production' }, { cwd })), 'JWT_SECRET')
  t.notOk(existsSync(join(cwd, DEV_SECRET_FILE)), 'production never falls back to a dev secret file')
  t.equal(loadConfig({ NODE_ENV: 'production', JWT_SECRET: SECRET }, { cwd }).production, true)

  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
  const config = loadConfig({ NODE_ENV: 'production', JWT_PUBLIC_KEY: pem }, { cwd })
  t.equal(config.jwt.source, 'JWT_PUBLIC_KEY')
  t.equal(config.jwt.publicKey, pem)
  // Env files often hold the PEM on one line with literal "\n".
  const oneLine = pem.trim().replace(/\n/g, '\\n')
  t.equal(loadConfig({ JWT_PUBLIC_KEY: oneLine }, { cwd }).jwt.publicKey, pem.trim())
})

t.test('outside production a dev secret file is created once and reused', async (t) => {
  const cwd = t.testdir()
  const first = loadConfig({}, { cwd })
  const file = join(cwd, DEV_SECRET_FILE)
  t.ok(existsSync(file), 'secret file created in cwd')
  t.equal(first.jwt.source, 'dev-secret-file')
  const secret = first.jwt.secret ?? ''
  t.ok(Buffer.byteLength(secret) >= 32, 'at least 32 bytes')
  t.equal(readFileSync(file, 'utf8').trim(), secret)
  t.equal(loadConfig({}, { cwd }).jwt.secret, secret, 'second start reuses it')
  t.not(loadConfig({}, { cwd: t.testdir() }).jwt.secret, secret, 'another directory gets another secret')
  t.equal(loadConfig({ JWT_SECRET: SECRET }, { cwd }).jwt.secret, SECRET, 'JWT_SECRET wins over the file')
})

t.test('redactedConfig never contains the secret or a password', async (t) => {
  const cwd = t.testdir()
  const config = loadConfig(
    { JWT_SECRET: SECRET, DATABASE_URL: 'postgres://app:db-password@db/quota', REDIS_URL: 'redis://:redis-password@r:6379' },
    { cwd },
  )
  const text = JSON.stringify(redactedConfig(config))
  t.notOk(text.includes(SECRET), 'no JWT secret')
  t.notOk(text.includes('db-password'), 'no database password')
  t.notOk(text.includes('redis-password'), 'no redis password')
  t.match(redactedConfig(config), { jwt: { source: 'JWT_SECRET', algorithm: 'HS256' } })

  const dev = loadConfig({}, { cwd })
  t.notOk(JSON.stringify(redactedConfig(dev)).includes(dev.jwt.secret ?? '<none>'), 'no dev secret either')
})

/**
 * Configuration (DESIGN.md 1.3): defaults, and every bad value refused at start with a ConfigError
 * that names the variable — an operator reading the crash must know what to fix.
 */
import { generateKeyPairSync } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { ConfigError, DEV_SECRET_FILE, EnvSchema, loadConfig, redactedConfig } from '../src/config.ts'

const SECRET = 'a-test-secret-that-is-long-enough-32b'
/** The Redis-first deployment's pair (mode redis). */
const REDIS_MODE = { REDIS_URL: 'redis://127.0.0.1:6379', DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/quota' }

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
    mode: 'embedded',
    dataDir: join(cwd, 'data'),
    port: 8000,
    host: '127.0.0.1',
    redisKeyPrefix: 'quota:',
    usageFailMode: 'closed',
    redisCommandTimeoutMs: 250,
    flushIntervalMs: 1000,
    defaultTier: 'free',
    demoRoutes: true,
    logLevel: 'info',
    production: false,
  })
  t.equal(config.jwt.source, 'dev-secret-file')
  // No Redis or Postgres address is assumed: embedded mode needs none.
  t.equal(config.redisUrl, undefined)
  t.equal(config.databaseUrl, undefined)
  t.equal(config.embeddedPgPort, undefined)
})

t.test('the mode follows from REDIS_URL, REDIS_CLUSTER_NODES and DATABASE_URL (DESIGN.md 1.10)', async (t) => {
  const cwd = t.testdir()
  const env = { JWT_SECRET: SECRET }
  t.match(loadConfig({ ...env, ...REDIS_MODE }, { cwd }), { mode: 'redis', ...{ redisUrl: REDIS_MODE.REDIS_URL, databaseUrl: REDIS_MODE.DATABASE_URL } })
  t.equal(loadConfig({ ...env, ...REDIS_MODE }, { cwd }).dataDir, undefined, 'no data folder in mode redis')
  t.match(loadConfig(env, { cwd }), { mode: 'embedded', dataDir: join(cwd, 'data') })
  t.match(loadConfig({ ...env, QUOTA_DATA_DIR: 'state/q', EMBEDDED_PG_PORT: '5499' }, { cwd }),
    { mode: 'embedded', dataDir: join(cwd, 'state/q'), embeddedPgPort: 5499 }, 'a relative folder is resolved from the working directory')
  t.match(loadConfig({ ...env, QUOTA_DATA_DIR: '/var/lib/quota' }, { cwd }), { dataDir: '/var/lib/quota' })

  // Half a Redis deployment stops the start, naming what is missing: never a silent fallback.
  const message = (fn: () => unknown): string => {
    try {
      fn()
      return '(accepted)'
    } catch (err) {
      return (err as Error).message
    }
  }
  t.equal(refusal(() => loadConfig({ ...env, REDIS_URL: REDIS_MODE.REDIS_URL }, { cwd })), 'DATABASE_URL')
  t.match(message(() => loadConfig({ ...env, REDIS_URL: REDIS_MODE.REDIS_URL }, { cwd })), /DATABASE_URL: is required with REDIS_URL/)
  t.equal(refusal(() => loadConfig({ ...env, REDIS_CLUSTER_NODES: 'r1:7000,r2:7000' }, { cwd })), 'DATABASE_URL')
  t.equal(refusal(() => loadConfig({ ...env, DATABASE_URL: REDIS_MODE.DATABASE_URL }, { cwd })), 'REDIS_URL')
  t.match(message(() => loadConfig({ ...env, DATABASE_URL: REDIS_MODE.DATABASE_URL }, { cwd })), /REDIS_URL: is required with DATABASE_URL/)
  t.equal(refusal(() => loadConfig({ ...env, ...REDIS_MODE, REDIS_CLUSTER_NODES: 'r1:7000' }, { cwd })), 'REDIS_CLUSTER_NODES', 'not both Redis variables')
  t.equal(refusal(() => loadConfig({ ...env, ...REDIS_MODE, QUOTA_DATA_DIR: 'data' }, { cwd })), 'QUOTA_DATA_DIR', 'embedded variables refused in mode redis')
  t.equal(refusal(() => loadConfig({ ...env, ...REDIS_MODE, EMBEDDED_PG_PORT: '5499' }, { cwd })), 'EMBEDDED_PG_PORT')
  t.equal(refusal(() => loadConfig({ ...env, EMBEDDED_PG_PORT: '0' }, { cwd })), 'EMBEDDED_PG_PORT')
  t.equal(refusal(() => loadConfig({ ...env, REDIS_CLUSTER_NODES: 'no-port' }, { cwd })), 'REDIS_CLUSTER_NODES')

  // Cluster mode: the seed nodes and Postgres.
  const cluster = { ...env, REDIS_CLUSTER_NODES: 'r1:7000,10.0.0.2:7001', DATABASE_URL: REDIS_MODE.DATABASE_URL }
  t.match(loadConfig(cluster, { cwd }), {
    mode: 'cluster', databaseUrl: REDIS_MODE.DATABASE_URL, redisBuckets: 64,
    redisClusterNodes: [{ host: 'r1', port: 7000 }, { host: '10.0.0.2', port: 7001 }],
  })
  t.equal(loadConfig(cluster, { cwd }).redisUrl, undefined)
  t.equal(refusal(() => loadConfig({ ...cluster, REDIS_CLUSTER_NODES: 'r1:0' }, { cwd })), 'REDIS_CLUSTER_NODES', 'port 0')
  t.equal(refusal(() => loadConfig({ ...cluster, REDIS_CLUSTER_NODES: 'r1:70000' }, { cwd })), 'REDIS_CLUSTER_NODES', 'port past 65535')
  t.equal(loadConfig({ ...cluster, REDIS_BUCKETS: '256' }, { cwd }).redisBuckets, 256)
  t.equal(refusal(() => loadConfig({ ...cluster, REDIS_BUCKETS: '0' }, { cwd })), 'REDIS_BUCKETS')
  t.equal(refusal(() => loadConfig({ ...cluster, REDIS_BUCKETS: '16385' }, { cwd })), 'REDIS_BUCKETS')

  // Production: embedded mode only when chosen deliberately, with QUOTA_DATA_DIR.
  const production = { NODE_ENV: 'production', JWT_SECRET: SECRET }
  t.equal(refusal(() => loadConfig(production, { cwd })), 'QUOTA_DATA_DIR')
  t.match(loadConfig({ ...production, QUOTA_DATA_DIR: '/srv/quota' }, { cwd }), { mode: 'embedded', dataDir: '/srv/quota', production: true })
  t.match(loadConfig({ ...production, ...REDIS_MODE }, { cwd }), { mode: 'redis', production: true })
  t.notOk(existsSync(join(cwd, DEV_SECRET_FILE)), 'JWT_SECRET given throughout: no dev secret file')
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
    // A valid secret and mode besides, so the failure can only come from the variable under test.
    const env = name === 'JWT_SECRET' ? { [name]: value } : { JWT_SECRET: SECRET, ...REDIS_MODE, [name]: value }
    t.equal(refusal(() => loadConfig(env, { cwd })), name, `${name}=${JSON.stringify(value)} refused`)
  }
  t.notOk(existsSync(join(cwd, DEV_SECRET_FILE)), 'no dev secret written while refusing')
})

t.test('NODE_ENV=production requires JWT_SECRET or JWT_PUBLIC_KEY', async (t) => {
  const cwd = t.testdir()
  t.equal(refusal(() => loadConfig({ NODE_ENV: 'production', ...REDIS_MODE }, { cwd })), 'JWT_SECRET')
  t.notOk(existsSync(join(cwd, DEV_SECRET_FILE)), 'production never falls back to a dev secret file')
  t.equal(loadConfig({ NODE_ENV: 'production', ...REDIS_MODE, JWT_SECRET: SECRET }, { cwd }).production, true)

  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
  const config = loadConfig({ NODE_ENV: 'production', ...REDIS_MODE, JWT_PUBLIC_KEY: pem }, { cwd })
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

t.test('hardening variables (issue 10): defaults, valid values, refusals', async (t) => {
  const cwd = t.testdir()
  t.match(loadConfig({ JWT_SECRET: SECRET }, { cwd }), {
    jwt: { issuer: undefined, audience: undefined, maxLifetimeS: 2_592_000, clockSkewS: 30 },
    http: { requestTimeoutMs: 10_000, headersTimeoutMs: 5000, keepAliveTimeoutMs: 72_000 },
    docs: true,
    redisAllowNoPersistence: false,
    idempotencyKeysPerUser: 10_000,
  })

  const config = loadConfig(
    {
      JWT_SECRET: SECRET, JWT_ISSUER: 'https://issuer.example/', JWT_AUDIENCE: 'quota, billing ,',
      JWT_MAX_LIFETIME_S: '3600', JWT_CLOCK_SKEW_S: '0', HTTP_REQUEST_TIMEOUT_MS: '20000',
      HTTP_HEADERS_TIMEOUT_MS: '20000', HTTP_KEEP_ALIVE_TIMEOUT_MS: '1000', DOCS_ENABLED: 'off',
      REDIS_ALLOW_NO_PERSISTENCE: 'yes', IDEMPOTENCY_KEYS_PER_USER: '1000000',
    },
    { cwd },
  )
  t.match(config, {
    jwt: { secret: SECRET, issuer: 'https://issuer.example/', maxLifetimeS: 3600, clockSkewS: 0 },
    http: { requestTimeoutMs: 20_000, headersTimeoutMs: 20_000, keepAliveTimeoutMs: 1000 },
    docs: false,
    redisAllowNoPersistence: true,
    idempotencyKeysPerUser: 1_000_000,
  })
  t.same(config.jwt.audience, ['quota', 'billing'], 'a comma-separated list, blanks dropped')

  const cases: Array<[string, string]> = [
    ['JWT_AUDIENCE', ' , '],
    ['JWT_MAX_LIFETIME_S', '59'],
    ['JWT_MAX_LIFETIME_S', '31536001'],
    ['JWT_CLOCK_SKEW_S', '301'],
    ['JWT_CLOCK_SKEW_S', '1.5'],
    ['HTTP_REQUEST_TIMEOUT_MS', '999'],
    ['HTTP_HEADERS_TIMEOUT_MS', '600001'],
    ['HTTP_KEEP_ALIVE_TIMEOUT_MS', '10s'],
    ['DOCS_ENABLED', 'sometimes'],
    ['REDIS_ALLOW_NO_PERSISTENCE', 'maybe'],
    ['IDEMPOTENCY_KEYS_PER_USER', '0'],
    ['IDEMPOTENCY_KEYS_PER_USER', '1000001'],
  ]
  for (const [name, value] of cases) {
    t.equal(refusal(() => loadConfig({ JWT_SECRET: SECRET, [name]: value }, { cwd })), name, `${name}=${JSON.stringify(value)} refused`)
  }
})

t.test('HTTP_HEADERS_TIMEOUT_MS may not exceed HTTP_REQUEST_TIMEOUT_MS', async (t) => {
  const cwd = t.testdir()
  // Each value alone is in range; only the pair is wrong — including against the other's default.
  t.equal(refusal(() => loadConfig({ JWT_SECRET: SECRET, HTTP_HEADERS_TIMEOUT_MS: '10001' }, { cwd })), 'HTTP_HEADERS_TIMEOUT_MS')
  t.equal(refusal(() => loadConfig({ JWT_SECRET: SECRET, HTTP_REQUEST_TIMEOUT_MS: '4999' }, { cwd })), 'HTTP_HEADERS_TIMEOUT_MS')
  t.equal(loadConfig({ JWT_SECRET: SECRET, HTTP_HEADERS_TIMEOUT_MS: '10000' }, { cwd }).http.headersTimeoutMs, 10_000, 'equal is allowed')
  t.notOk(existsSync(join(cwd, DEV_SECRET_FILE)), 'no dev secret written while refusing')
  t.equal(refusal(() => loadConfig({ HTTP_HEADERS_TIMEOUT_MS: '10001' }, { cwd })), 'HTTP_HEADERS_TIMEOUT_MS')
  t.notOk(existsSync(join(cwd, DEV_SECRET_FILE)), 'not even when the dev secret would be needed')
})

t.test('redactedConfig shows issuer and audience, still no secret', async (t) => {
  const config = loadConfig(
    { JWT_SECRET: SECRET, JWT_ISSUER: 'iss-1', JWT_AUDIENCE: 'aud-1,aud-2' },
    { cwd: t.testdir() },
  )
  const redacted = redactedConfig(config)
  t.match(redacted, { jwt: { source: 'JWT_SECRET', issuer: 'iss-1', audience: ['aud-1', 'aud-2'], maxLifetimeS: 2_592_000 } })
  t.notOk(JSON.stringify(redacted).includes(SECRET), 'no JWT secret')
})

t.test('README documents every variable of the schema', async (t) => {
  const readme = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('## API'))
  for (const name of Object.keys(EnvSchema.properties)) {
    // As a row (`NAME`) or, for NODE_ENV, as a value in the notes (`NODE_ENV=production`).
    t.match(section, new RegExp(`\`${name}[\`=]`), `${name} is in README.md's configuration section`)
  }
})

t.test('WEBHOOK_URL and WEBHOOK_SECRET (DESIGN.md 1.3, 1.11): both or neither, an http(s) URL, a key of 32 bytes', async (t) => {
  const cwd = t.testdir()
  const KEY = 'a-webhook-signing-key-of-32-bytes!'
  t.equal(loadConfig({ JWT_SECRET: SECRET }, { cwd }).webhook, undefined, 'none by default: events are recorded, not POSTed')
  t.same(loadConfig({ JWT_SECRET: SECRET, WEBHOOK_URL: 'https://hooks.example.com/quota', WEBHOOK_SECRET: KEY }, { cwd }).webhook,
    { url: 'https://hooks.example.com/quota', secret: KEY })
  t.same(loadConfig({ ...REDIS_MODE, JWT_SECRET: SECRET, WEBHOOK_URL: 'http://127.0.0.1:9000/h', WEBHOOK_SECRET: KEY }, { cwd }).webhook?.url,
    'http://127.0.0.1:9000/h', 'in mode redis too')
  t.equal(loadConfig({ JWT_SECRET: SECRET, WEBHOOK_URL: '', WEBHOOK_SECRET: '' }, { cwd }).webhook, undefined, 'empty = unset')
  const refused = (env: Record<string, string>) => refusal(() => loadConfig({ JWT_SECRET: SECRET, ...env }, { cwd }))
  t.equal(refused({ WEBHOOK_URL: 'https://hooks.example.com/quota' }), 'WEBHOOK_SECRET', 'the URL without a key')
  t.equal(refused({ WEBHOOK_SECRET: KEY }), 'WEBHOOK_URL', 'a key without the URL')
  t.equal(refused({ WEBHOOK_URL: 'https://hooks.example.com/quota', WEBHOOK_SECRET: 'short' }), 'WEBHOOK_SECRET', 'a short key')
  t.equal(refused({ WEBHOOK_URL: 'ftp://hooks.example.com/quota', WEBHOOK_SECRET: KEY }), 'WEBHOOK_URL', 'not http(s)')
  t.equal(refused({ WEBHOOK_URL: 'hooks.example.com', WEBHOOK_SECRET: KEY }), 'WEBHOOK_URL', 'not a URL')
  t.throws(() => loadConfig({ JWT_SECRET: SECRET, WEBHOOK_URL: 'https://h.example.com', WEBHOOK_SECRET: 'short-key' }, { cwd }),
    { message: 'WEBHOOK_SECRET: must be at least 32 bytes, got 9' })
  t.throws(() => loadConfig({ JWT_SECRET: SECRET, WEBHOOK_URL: 'https://h.example.com', WEBHOOK_SECRET: 'x'.repeat(31) }, { cwd }),
    { message: /^WEBHOOK_SECRET: must be at least 32 bytes, got 31$/ }, 'the key never appears in the message')

  const config = loadConfig({ JWT_SECRET: SECRET, WEBHOOK_URL: 'https://user:hook-password@hooks.example.com/q', WEBHOOK_SECRET: KEY }, { cwd })
  const text = JSON.stringify(redactedConfig(config))
  t.notOk(text.includes(KEY), 'redactedConfig: no webhook key')
  t.notOk(text.includes('hook-password'), 'redactedConfig: no password in the URL')
  t.match(redactedConfig(config), { webhook: { url: 'https://user:***@hooks.example.com/q' } })
})

/**
 * EnvSchema: the one description of the environment — every variable with its type, default,
 * bounds or pattern, and meaning. config.ts reads the environment against it (and adds the rules
 * a schema cannot state); README's configuration table documents each variable.
 */
import { Type } from 'typebox'

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** A whole number with its default and bounds: most variables are one. */
const Int = (def: number, min: number, max: number, description: string) =>
  Type.Integer({ default: def, minimum: min, maximum: max, description })

/**
 * Keys are the variable names, so a validation error's path is the variable to name. `expected`
 * (not a JSON Schema keyword, ignored by validation) is the error phrase where the type alone
 * cannot give one.
 */
export const EnvSchema = Type.Object({
  NODE_ENV: Type.Optional(Type.String({ description: '"production" requires a configured JWT key' })),
  PORT: Int(8000, 0, 65535, 'listen port'),
  HOST: Type.String({ default: '127.0.0.1', description: 'listen address' }),
  // No defaults for the three below: which of them are set chooses the deployment mode (modeOf).
  REDIS_URL: Type.Optional(Type.String({ description: 'standalone Redis (redis: or rediss:): mode redis, with DATABASE_URL' })),
  REDIS_CLUSTER_NODES: Type.Optional(Type.Array(Type.String({ pattern: '^[^\\s:,]+:\\d{1,5}$' }), {
    minItems: 1, description: 'comma-separated host:port seed nodes of a Redis Cluster: mode cluster, with DATABASE_URL',
    expected: 'a comma-separated list of host:port',
  })),
  REDIS_BUCKETS: Int(64, 1, 16_384, 'buckets (hash tags, so Redis Cluster slots) users are spread over; change only as docs/scaling.md says'),
  REDIS_WAIT_REPLICAS: Int(0, 0, 16, 'replicas every decision must reach (WAIT) before it is answered: 1 makes a failover lose no admitted decision'),
  REDIS_KEY_PREFIX: Type.String({
    default: 'quota:', pattern: '^[^{}\\s]*$', description: 'prefix of every Redis key',
    expected: 'free of braces and spaces (they would break hash tags)',
  }),
  REDIS_ALLOW_NO_PERSISTENCE: Type.Boolean({
    default: false, description: 'with NODE_ENV=production, allow a Redis without AOF or RDB persistence',
  }),
  DATABASE_URL: Type.Optional(Type.String({
    description: 'Postgres (postgres: or postgresql:); required with REDIS_URL or REDIS_CLUSTER_NODES',
  })),
  QUOTA_DATA_DIR: Type.Optional(Type.String({
    minLength: 1, description: "embedded mode's data folder (default ./data outside production; in production, setting it chooses embedded mode)",
  })),
  EMBEDDED_PG_PORT: Type.Optional(Type.Integer({
    minimum: 1, maximum: 65535, description: 'embedded mode: also serve the embedded database on 127.0.0.1:<port> (psql)',
  })),
  // writeOnly: never echoed in an error message.
  JWT_SECRET: Type.Optional(Type.String({ writeOnly: true, description: 'HS256 secret, at least 32 bytes' })),
  JWT_PUBLIC_KEY: Type.Optional(Type.String({ writeOnly: true, description: 'PEM public key: RS256/ES256, not HS256' })),
  JWT_ISSUER: Type.Optional(Type.String({ description: "when set, a token's iss must equal it" })),
  JWT_AUDIENCE: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
    minItems: 1, description: "comma-separated; when set, a token's aud must contain one of them",
    expected: 'a comma-separated list of audiences',
  })),
  WEBHOOK_URL: Type.Optional(Type.String({ description: 'where threshold events are POSTed (http: or https:), with WEBHOOK_SECRET' })),
  WEBHOOK_SECRET: Type.Optional(Type.String({ writeOnly: true, description: 'HMAC-SHA256 key signing the webhooks, at least 32 bytes' })),
  JWT_MAX_LIFETIME_S: Int(2_592_000, 60, 31_536_000, 'longest token lifetime: exp - iat, or exp - now without iat'),
  JWT_CLOCK_SKEW_S: Int(30, 0, 300, 'allowance for exp, nbf and iat in the future'),
  HTTP_REQUEST_TIMEOUT_MS: Int(10_000, 1000, 600_000, 'longest time to receive a whole request'),
  HTTP_HEADERS_TIMEOUT_MS: Int(5000, 1000, 600_000, 'longest time to receive the headers'),
  HTTP_KEEP_ALIVE_TIMEOUT_MS: Int(72_000, 1000, 600_000, 'idle keep-alive connections are closed after this'),
  DOCS_ENABLED: Type.Boolean({ default: true, description: 'serves /docs and /docs/json' }),
  USAGE_FAIL_MODE: Type.Enum(['closed', 'open'], { default: 'closed', description: 'when Redis cannot be reached' }),
  REDIS_COMMAND_TIMEOUT_MS: Int(250, 1, 60_000, 'the longest a decision waits for Redis'),
  FLUSH_INTERVAL_MS: Int(1000, 10, 3_600_000, 'Redis -> Postgres flush period'),
  IDEMPOTENCY_KEYS_PER_USER: Int(10_000, 1, 1_000_000, 'most idempotency keys one user holds at once (24 h each)'),
  // No default: unset keeps all history.
  HISTORY_RETENTION_MONTHS: Type.Optional(Type.Integer({
    minimum: 1, maximum: 1200,
    description: 'drop daily_usage months older than this many months (the current one never); unset keeps everything',
  })),
  DEFAULT_TIER: Type.String({
    default: 'free', pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'tier of a user first seen',
    expected: 'a tier name (letters, digits, _ or -)',
  }),
  DEMO_ROUTES: Type.Boolean({ default: true, description: 'mounts POST /api/deploy' }),
  LOG_LEVEL: Type.Enum(LOG_LEVELS, { default: 'info', description: 'pino level' }),
})

/**
 * TypeBox schemas of the HTTP API: request validation (no coercion, no extra properties) and
 * response serialization, and the OpenAPI document generated from both.
 */
import { Type } from 'typebox'
import { METRIC_NAMES } from '../metrics.ts'

export const TIER_PATTERN = '^[a-z0-9_-]{1,64}$'

/**
 * A UUID in any letter case (ids are normalised to lower case). `format: 'uuid'` gives the
 * readable "must be a UUID"; ajv's uuid format also admits a `urn:uuid:` prefix, which the
 * 36-character bound (checked before the format) refuses.
 */
export const Uuid = (options: { description?: string } = {}) =>
  Type.String({ format: 'uuid', maxLength: 36, ...options })

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T) => Type.Union([schema, Type.Null()])

/** One `enum` (not a union of constants): one validation error, one readable OpenAPI field. */
export const MetricName = Type.Enum(METRIC_NAMES, { type: 'string', description: `One of ${METRIC_NAMES.join(', ')}` })

export const Amount = Type.Number({
  description: 'Amount in the metric\'s unit: > 0, at most 6 decimals, at most 1e9 (storage increments may be negative)',
  examples: [1],
})

export const IdempotencyKey = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: '^[\\x20-\\x7E]+$',
  description: '1-128 printable ASCII characters; a repeat within 24 h returns the first answer and counts nothing',
})

export const MetricAmounts = Type.Object(
  Object.fromEntries(METRIC_NAMES.map((m) => [m, Type.Optional(Amount)])) as Record<string, ReturnType<typeof Type.Optional<typeof Amount>>>,
  { additionalProperties: false, minProperties: 1, description: 'Amounts per metric, consumed all or none' },
)

export const CheckLimitBody = Type.Object(
  { metric: MetricName, amount: Type.Optional(Amount) },
  { additionalProperties: false, examples: [{ metric: 'deployments', amount: 1 }] },
)

export const ConsumeBody = Type.Object(
  {
    metric: Type.Optional(MetricName),
    amount: Type.Optional(Amount),
    metrics: Type.Optional(MetricAmounts),
    idempotency_key: Type.Optional(IdempotencyKey),
  },
  {
    additionalProperties: false,
    description: 'Either {metric, amount=1} or {metrics: {<metric>: amount, ...}}',
    examples: [{ metric: 'deployments', amount: 1, idempotency_key: 'deploy-7f3a' }, { metrics: { deployments: 1, api_calls: 10 } }],
  },
)

export const IncrementBody = Type.Object(
  { metric: MetricName, amount: Amount, idempotency_key: Type.Optional(IdempotencyKey) },
  { additionalProperties: false, examples: [{ metric: 'compute_hours', amount: 1.25 }] },
)

export const ResetBody = Type.Object(
  {
    user_id: Type.Optional(Uuid({ description: 'Only this user (default: everyone)' })),
    metric: Type.Optional(MetricName),
  },
  { additionalProperties: false, examples: [{ user_id: '550e8400-e29b-41d4-a716-446655440000', metric: 'deployments' }] },
)

export const UserIdParams = Type.Object({ id: Uuid({ description: 'User id' }) }, { additionalProperties: false })
export const TierParams = Type.Object({ tier: Type.String({ pattern: TIER_PATTERN }) }, { additionalProperties: false })

export const TierBody = Type.Object(
  { tier: Type.String({ pattern: TIER_PATTERN }) },
  { additionalProperties: false, examples: [{ tier: 'pro' }] },
)

const CountLimit = Nullable(Type.Integer({ minimum: 0, maximum: 2_147_483_647 }))
const DecimalLimit = Nullable(Type.Number({ minimum: 0, maximum: 1e9 }))

export const LimitsBody = Type.Object(
  {
    max_deployments_per_day: Type.Optional(CountLimit),
    max_api_calls_per_day: Type.Optional(CountLimit),
    max_compute_hours_per_day: Type.Optional(DecimalLimit),
    max_storage_gb: Type.Optional(DecimalLimit),
  },
  { additionalProperties: false, minProperties: 1, description: 'null = unlimited; absent = unchanged', examples: [{ max_deployments_per_day: 20 }] },
)

export const MetricStateSchema = Type.Object({
  current: Type.Number(),
  limit: Nullable(Type.Number()),
  remaining: Nullable(Type.Number()),
  unit: Type.String(),
  period: Type.String(),
  reserved: Type.Optional(Type.Number({ description: 'Held by open reservations: counts against the limit' })),
})

export const StatusResponse = Type.Object({
  user_id: Type.String(),
  tier: Type.String(),
  date: Type.String({ description: 'UTC day, YYYY-MM-DD' }),
  resets_at: Type.String({ description: 'Next 00:00:00Z' }),
  metrics: Type.Object(Object.fromEntries(METRIC_NAMES.map((m) => [m, MetricStateSchema]))),
}, { description: "Today's usage of every metric (limit/remaining null = unlimited)" })

export const CheckLimitResponse = Type.Object({
  allowed: Type.Boolean(),
  metric: Type.String(),
  amount: Type.Number(),
  current: Nullable(Type.Number()),
  limit: Nullable(Type.Number()),
  remaining: Nullable(Type.Number()),
  tier: Type.String(),
  reason: Nullable(Type.String()),
  resets_at: Nullable(Type.String()),
  degraded: Type.Optional(Type.Boolean()),
}, { description: 'The decision, without counting anything' })

const ConsumedMetricSchema = Type.Object({
  amount: Type.Number(),
  current: Nullable(Type.Number()),
  limit: Nullable(Type.Number()),
  remaining: Nullable(Type.Number()),
  unit: Type.String(),
  period: Type.String(),
})

export const ConsumeResponse = Type.Object({
  allowed: Type.Boolean(),
  tier: Type.String(),
  date: Type.String(),
  resets_at: Nullable(Type.String()),
  metric: Type.Optional(Type.String()),
  amount: Type.Optional(Type.Number()),
  current: Type.Optional(Nullable(Type.Number())),
  limit: Type.Optional(Nullable(Type.Number())),
  remaining: Type.Optional(Nullable(Type.Number())),
  metrics: Type.Object(Object.fromEntries(METRIC_NAMES.map((m) => [m, Type.Optional(ConsumedMetricSchema)]))),
  degraded: Type.Optional(Type.Boolean()),
}, { description: 'Admitted and counted: the values after this call' })

const ErrorDetail = Type.Object(
  { error: Type.String(), message: Type.String() },
  { additionalProperties: true },
)

export const ErrorResponse = Type.Object({ detail: ErrorDetail }, { description: 'Error envelope' })

/** Response headers of a spend answer, for the OpenAPI document (@fastify/swagger reads `headers`). */
const RateLimitHeaderDocs = {
  'RateLimit-Limit': { type: 'integer', description: 'Limit of the denied metric (or the one closest to its limit)' },
  'RateLimit-Remaining': { type: 'integer', description: 'What is left of it, rounded down' },
  'RateLimit-Reset': { type: 'integer', description: 'Seconds to the next 00:00:00Z (daily metrics only)' },
  'RateLimit-Policy': { type: 'string', description: 'One policy per limited metric, e.g. "deployments";q=10;w=86400' },
  RateLimit: { type: 'string', description: 'Remaining and reset per metric, e.g. "deployments";r=0;t=3600' },
}

export const LimitExceededResponse = Type.Object(
  {
    detail: Type.Object(
      {
        error: Type.Literal('Usage limit exceeded'),
        message: Type.String(),
        current: Nullable(Type.Number()),
        limit: Nullable(Type.Number()),
        tier: Type.String(),
        metric: Type.String(),
      },
      { additionalProperties: true },
    ),
  },
  {
    description: 'Over the limit; Retry-After and RateLimit-* headers tell when it resets',
    headers: {
      'Retry-After': { type: 'integer', description: 'Seconds to the next 00:00:00Z; absent when the storage gauge (which does not reset) was denied' },
      ...RateLimitHeaderDocs,
    },
    examples: [{ detail: { error: 'Usage limit exceeded', message: 'Daily deployments limit exceeded', current: 10, limit: 10, tier: 'free', metric: 'deployments' } }],
  },
)

export const TierLimitsSchema = Type.Object({
  tier: Type.String(),
  max_deployments_per_day: Nullable(Type.Number()),
  max_api_calls_per_day: Nullable(Type.Number()),
  max_compute_hours_per_day: Nullable(Type.Number()),
  max_storage_gb: Nullable(Type.Number()),
}, { description: "A tier's limits (null = unlimited)" })

export const LimitsListResponse = Type.Object({ tiers: Type.Array(TierLimitsSchema) }, { description: "Every tier's limits, by tier name" })

export const UserTierResponse = Type.Object(
  { user_id: Type.String(), username: Type.String(), tier: Type.String() },
  { description: 'The user with the new tier' },
)

export const ResetResponse = Type.Object({
  date: Type.String(),
  user_id: Nullable(Type.String()),
  metrics: Type.Array(Type.String()),
  users_reset: Type.Integer({ description: 'Users whose counters were zeroed' }),
  rows_updated: Type.Integer({ description: 'daily_usage rows zeroed' }),
  complete: Type.Boolean({ description: 'Every user of the scope was zeroed and daily_usage has the zeros; false: send the same reset again' }),
  users_failed: Type.Array(Type.String(), { description: 'Users that could not be zeroed (unchanged), the first 100' }),
  users_failed_count: Type.Integer({ description: 'How many users could not be zeroed' }),
  persisted: Type.Boolean({ description: 'daily_usage was updated in this call; false: the flusher writes the zeros on its next pass' }),
}, { description: 'What was zeroed (complete or partial)' })

const ERROR_DESCRIPTIONS = {
  400: 'Bad input; `message` and `field` name the field. Nothing was counted',
  401: 'Missing, expired, unsigned or malformed bearer token',
  403: 'The route requires an admin token',
  404: 'No such user or tier',
  413: 'Request body larger than 16 KiB',
  415: 'Request body is not application/json',
  422: 'idempotency_key already used with different parameters',
  503: 'Redis or Postgres unreachable (USAGE_FAIL_MODE=closed); retry after Retry-After seconds',
} as const

export type ErrorStatus = keyof typeof ERROR_DESCRIPTIONS

/** The error answers a route may give, each documented with what it means. */
export function errorResponses<S extends ErrorStatus>(...statuses: S[]): Record<S, typeof ErrorResponse> {
  const responses = {} as Record<S, typeof ErrorResponse>
  for (const status of statuses) responses[status] = Type.Object({ detail: ErrorDetail }, { description: ERROR_DESCRIPTIONS[status] })
  return responses
}

/** Standard error answers every authenticated route may give. */
export const commonErrors = errorResponses(400, 401, 403, 413, 415, 503)

// ---- Reports (GET /api/usage/admin/top, near-limits, history) ----
// Query strings are strings (types are never coerced), so numbers are matched by pattern here and
// range-checked by the route.

export const TopQuery = Type.Object({
  date: Type.Optional(Type.String({ pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}$', description: 'UTC day, YYYY-MM-DD (default: today)' })),
  metric: Type.Optional(MetricName),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$', description: 'Users listed, 1-1000 (default 10)' })),
}, { additionalProperties: false })

export const NearLimitsQuery = Type.Object({
  threshold: Type.Optional(Type.String({ pattern: '^[0-9]{1,2}(\\.[0-9]{1,6})?$', description: 'Fraction of the limit, > 0 and <= 10 (default 0.8)' })),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$', description: 'Users listed, 1-1000 (default 100)' })),
}, { additionalProperties: false })

export const HistoryQuery = Type.Object({
  days: Type.Optional(Type.String({ pattern: '^[0-9]{1,3}$', description: 'Days before today to include, 1-366 (default 7, as the spec)' })),
  user_id: Type.Optional(Uuid({ description: 'Only this user (default: everyone)' })),
}, { additionalProperties: false })

const UsageRowSchema = Type.Object({
  user_id: Type.String(),
  username: Type.String(),
  tier: Type.String(),
  deployments_created: Type.Number(),
  api_calls: Type.Number(),
  compute_hours: Type.Number(),
  storage_gb: Type.Number(),
})

export const TopUsersResponse = Type.Object({
  date: Type.String(),
  metric: Type.String(),
  users: Type.Array(UsageRowSchema),
}, { description: "The day's users, the largest use of `metric` first" })

const NearMetricSchema = Type.Object({
  current: Type.Number(),
  limit: Type.Number(),
  ratio: Nullable(Type.Number({ description: 'current / limit; null when the limit is 0' })),
  near: Type.Boolean({ description: 'Over threshold x limit' }),
})

export const NearLimitsResponse = Type.Object({
  date: Type.String(),
  threshold: Type.Number(),
  users: Type.Array(Type.Object({
    user_id: Type.String(),
    username: Type.String(),
    tier: Type.String(),
    metrics: Type.Object(
      Object.fromEntries(METRIC_NAMES.map((m) => [m, Type.Optional(NearMetricSchema)])),
      { description: 'Every limited metric of the tier (an unlimited one is absent)' },
    ),
  })),
}, { description: 'Users over threshold x limit in at least one limited metric today' })

export const HistoryResponse = Type.Object({
  from: Type.String(),
  to: Type.String(),
  user_id: Nullable(Type.String()),
  days: Type.Array(Type.Object({
    date: Type.String(),
    active_users: Type.Integer(),
    total_deployments: Type.Number(),
    total_api_calls: Type.Number(),
    total_compute_hours: Type.Number(),
    total_storage_gb: Type.Number(),
  })),
}, { description: 'Per day, newest first; days without any usage are absent' })

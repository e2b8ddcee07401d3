/**
 * TypeBox schemas of the HTTP API: request validation (no coercion, no extra properties) and
 * response serialization, and the OpenAPI document generated from both.
 */
import { Type } from 'typebox'
import { METRIC_NAMES } from '../metrics.ts'

export const UUID_PATTERN = '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
export const TIER_PATTERN = '^[a-z0-9_-]{1,64}$'

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T) => Type.Union([schema, Type.Null()])

export const MetricName = Type.Union(METRIC_NAMES.map((m) => Type.Literal(m)), {
  description: `One of ${METRIC_NAMES.join(', ')}`,
})

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
    user_id: Type.Optional(Type.String({ pattern: UUID_PATTERN, description: 'Only this user (default: everyone)' })),
    metric: Type.Optional(MetricName),
  },
  { additionalProperties: false, examples: [{ user_id: '550e8400-e29b-41d4-a716-446655440000', metric: 'deployments' }] },
)

export const UserIdParams = Type.Object({ id: Type.String({ pattern: UUID_PATTERN }) }, { additionalProperties: false })
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
})

export const StatusResponse = Type.Object({
  user_id: Type.String(),
  tier: Type.String(),
  date: Type.String({ description: 'UTC day, YYYY-MM-DD' }),
  resets_at: Type.String({ description: 'Next 00:00:00Z' }),
  metrics: Type.Object(Object.fromEntries(METRIC_NAMES.map((m) => [m, MetricStateSchema]))),
})

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
})

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
  replayed: Type.Boolean(),
  resets_at: Nullable(Type.String()),
  metric: Type.Optional(Type.String()),
  amount: Type.Optional(Type.Number()),
  current: Type.Optional(Nullable(Type.Number())),
  limit: Type.Optional(Nullable(Type.Number())),
  remaining: Type.Optional(Nullable(Type.Number())),
  metrics: Type.Object(Object.fromEntries(METRIC_NAMES.map((m) => [m, Type.Optional(ConsumedMetricSchema)]))),
  degraded: Type.Optional(Type.Boolean()),
})

export const ErrorResponse = Type.Object(
  {
    detail: Type.Object(
      { error: Type.String(), message: Type.String() },
      { additionalProperties: true },
    ),
  },
  { description: 'Error envelope' },
)

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
    examples: [{ detail: { error: 'Usage limit exceeded', message: 'Daily deployments limit exceeded', current: 10, limit: 10, tier: 'free', metric: 'deployments' } }],
  },
)

export const TierLimitsSchema = Type.Object({
  tier: Type.String(),
  max_deployments_per_day: Nullable(Type.Number()),
  max_api_calls_per_day: Nullable(Type.Number()),
  max_compute_hours_per_day: Nullable(Type.Number()),
  max_storage_gb: Nullable(Type.Number()),
})

export const LimitsListResponse = Type.Object({ tiers: Type.Array(TierLimitsSchema) })

export const UserTierResponse = Type.Object({ user_id: Type.String(), username: Type.String(), tier: Type.String() })

export const ResetResponse = Type.Object({
  date: Type.String(),
  user_id: Nullable(Type.String()),
  metrics: Type.Array(Type.String()),
  users_reset: Type.Integer(),
  rows_updated: Type.Integer(),
})

/** Standard error answers every authenticated route may give. */
export const commonErrors = {
  400: ErrorResponse,
  401: ErrorResponse,
  403: ErrorResponse,
  413: ErrorResponse,
  415: ErrorResponse,
  503: ErrorResponse,
}

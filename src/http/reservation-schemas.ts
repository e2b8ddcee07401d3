/** Bodies and answers of the reservation routes (routes/reservations.ts). */
import { Type } from 'typebox'
import { Amount, IdempotencyKey, MetricName } from './schemas.ts'

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T) => Type.Union([schema, Type.Null()])

export const ReserveBody = Type.Object(
  {
    metric: MetricName,
    amount: Amount,
    ttl_seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400, description: 'Seconds until the hold lapses by itself (default 300)' })),
    idempotency_key: Type.Optional(IdempotencyKey),
  },
  {
    additionalProperties: false,
    description: 'Holds an estimate of a daily metric against today\'s limit',
    examples: [{ metric: 'compute_hours', amount: 2.5, ttl_seconds: 600 }],
  },
)

export const CommitBody = Type.Object(
  { amount: Type.Number({ minimum: 0, maximum: 1e9, description: 'The actual amount used (0 allowed); may exceed what was held' }) },
  { additionalProperties: false, examples: [{ amount: 1.75 }] },
)

export const ReservationParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 64, description: 'reservation_id from the reserve answer' }) },
  { additionalProperties: false },
)

const MetricFields = {
  metric: MetricName,
  date: Type.String({ description: 'UTC day the reservation counts on' }),
  current: Type.Number({ description: 'Used that day (holds not included)' }),
  limit: Nullable(Type.Number()),
  remaining: Nullable(Type.Number({ description: 'What a consume may still take: limit - used - every hold' })),
  reserved: Type.Number({ description: 'Held by open reservations of this metric that day' }),
}

export const ReserveResponse = Type.Object({
  reservation_id: Type.String(),
  amount: Type.Number(),
  expires_at: Type.String({ description: 'ISO time the hold lapses by itself' }),
  tier: Type.String(),
  ...MetricFields,
}, { description: 'The hold: commit it with the actual amount, or cancel it' })

export const CommitResponse = Type.Object({
  reservation_id: Type.String(),
  held: Type.Number({ description: 'What the reservation held (released now)' }),
  amount: Type.Number({ description: 'The actual amount recorded' }),
  exceeded_hold: Type.Boolean({ description: 'The actual amount was more than was held (recorded anyway: the work happened)' }),
  ...MetricFields,
}, { description: 'Committed (a repeat answers the first commit again, with the idempotent-replayed header)' })

export const CancelResponse = Type.Object({
  reservation_id: Type.String(),
  released: Type.Number({ description: 'What the reservation held' }),
  ...MetricFields,
}, { description: 'Cancelled: nothing was recorded' })

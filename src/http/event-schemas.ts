/**
 * TypeBox schemas of GET /api/usage/admin/events (threshold events, docs/events.md): the query
 * string and the answer, each event with the webhook body's fields plus its delivery state.
 */
import { Type } from 'typebox'

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T) => Type.Union([schema, Type.Null()])
const Time = (description: string) => Type.String({ description: `${description} (ISO 8601, UTC)` })

// Query strings are strings (types are never coerced): numbers are matched by pattern here and
// range-checked by the route.
export const EventsQuery = Type.Object({
  after: Type.Optional(Type.String({ pattern: '^[0-9]{1,16}$', description: 'Only events with a larger id (default 0: from the first)' })),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$', description: 'Events listed, 1-1000 (default 100)' })),
}, { additionalProperties: false })

export const UsageEventSchema = Type.Object({
  id: Type.Integer({ description: 'Increasing; the webhook receivers dedupe on it' }),
  type: Type.Literal('usage.threshold'),
  user_id: Type.String(),
  metric: Type.String(),
  date: Type.String({ description: 'UTC day of the crossing, YYYY-MM-DD' }),
  threshold: Type.Integer({ description: 'Percent of the limit reached: 80 or 100' }),
  current: Type.Number({ description: "The metric's value right after the crossing decision" }),
  limit: Type.Number({ description: 'The limit then in force' }),
  created_at: Time('When the crossing decision ran'),
  rearmed_at: Nullable(Time('When a reset or a tier or limit change ended this event, so a later crossing of the day is a new one')),
  delivery: Type.Enum(['pending', 'delivered', 'gave_up'], { type: 'string', description: 'Webhook delivery: pending (also when no WEBHOOK_URL is set), delivered (a 2xx answer), gave_up (24 h of failures)' }),
  attempts: Type.Integer({ description: 'Delivery attempts made' }),
  next_attempt_at: Time('When the next attempt is due (while pending)'),
  delivered_at: Nullable(Time('When the receiver answered 2xx')),
  last_error: Nullable(Type.String({ description: "The last failed attempt's error" })),
  gave_up_at: Nullable(Time('When retrying stopped')),
})

export const EventsResponse = Type.Object({
  events: Type.Array(UsageEventSchema),
  next_after: Type.Integer({ description: 'The last id listed (or `after` when none): pass it as `after` for the next page' }),
}, { description: 'Threshold events, oldest (lowest id) first' })

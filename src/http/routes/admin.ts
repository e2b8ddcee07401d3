/**
 * Admin routes under /api/usage/admin: manual reset, any user's status, a user's tier, tier limits,
 * the reports and the threshold events.
 * The work is the admin service's (usage/admin.ts); these routes validate, authorise and render.
 * Every change is done in the name of the admin's token (the service records it in admin_audit)
 * and logged here with actor, action, target and outcome.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import type { EventRow } from '../../db/usage-events.ts'
import type { TierLimitsRow } from '../../db/usage-limits.ts'
import type { AdminActor } from '../../usage/admin.ts'
import { UnknownTierError } from '../../usage/errors.ts'
import { HttpError } from '../errors.ts'
import { EventsQuery, EventsResponse } from '../event-schemas.ts'
import {
  LimitsBody, LimitsListResponse, ResetBody, ResetResponse, StatusResponse, TierBody, TierLimitsSchema, TierParams,
  UserIdParams, UserTierResponse, errorResponses,
} from '../schemas.ts'
import {
  HistoryQuery, HistoryResponse, NearLimitsQuery, NearLimitsResponse, TopQuery, TopUsersResponse,
} from '../schemas.ts'

const security = [{ bearerAuth: [] }]

function limitsBody(row: TierLimitsRow) {
  const num = (v: string | number | null): number | null => (v === null ? null : Number(v))
  return {
    tier: row.tier,
    max_deployments_per_day: num(row.max_deployments_per_day),
    max_api_calls_per_day: num(row.max_api_calls_per_day),
    max_compute_hours_per_day: num(row.max_compute_hours_per_day),
    max_storage_gb: num(row.max_storage_gb),
  }
}

type Outcome = 'ok' | 'partial' | 'error' | 'not-found'

function actorOf(request: FastifyRequest): AdminActor {
  return { id: request.user.id, log: request.log }
}

/** Runs an admin action and logs how it ended; what it throws is logged and rethrown. */
async function logged<T>(
  request: FastifyRequest,
  action: string,
  target: Record<string, unknown>,
  run: () => Promise<T>,
  outcomeOf: (result: T) => Outcome,
  detailOf: (result: T) => Record<string, unknown> = () => ({}),
): Promise<T> {
  const actor = request.user.id
  let result: T
  try {
    result = await run()
  } catch (err) {
    // The same classification the error handler makes: a missing user, or the tier named in the URL.
    const missing = (err instanceof HttpError && err.statusCode === 404)
      || (err instanceof UnknownTierError && (request.params as { tier?: unknown } | undefined)?.tier === err.tier)
    const outcome = missing ? 'not-found' : 'error'
    request.log.warn({ actor, action, target, outcome, err: (err as Error).message }, `admin ${action}: ${outcome}`)
    throw err
  }
  const outcome = outcomeOf(result)
  const log = outcome === 'ok' ? request.log.info.bind(request.log) : request.log.warn.bind(request.log)
  log({ actor, action, target, outcome, ...detailOf(result) }, `admin ${action}: ${outcome}`)
  return result
}

const adminRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { admin } = app.quota
  app.addHook('onRequest', app.requireAdmin)

  app.post('/manual-reset', {
    // The spec's curl sends no body at all: that means "everyone, every daily metric". A body of
    // JSON `null` is refused rather than read as "everyone": a client bug must not reset everyone.
    preValidation: async (request) => {
      if (request.body === null) {
        throw new HttpError(400, 'Invalid request', 'body must be an object; send no body to reset everyone', { field: 'body' })
      }
      if (request.body === undefined) request.body = {}
    },
    schema: {
      tags: ['admin'],
      summary: "Zeroes today's counters of one user / one metric / everyone, in Redis and Postgres",
      description: [
        'Without `user_id`, everyone active today; without `metric`, the daily metrics (the storage gauge only when named).',
        "The body may be left out (the spec's curl sends none): that resets everyone. A body of JSON `null` is refused (400).",
        'An unknown `user_id` answers 404 and changes nothing.',
        '',
        "Each user's counters are zeroed on their own, then that user's daily_usage row (a row a flush rewrote meanwhile is left to the flusher, so a spend made meanwhile is kept).",
        'One user failing does not stop the others: the answer then says `complete: false` and lists `users_failed` (unchanged users, first 100;',
        '`users_failed_count` is exact). `persisted: false` means the counters are zeroed but daily_usage is not yet: the flusher writes it on its next pass.',
        'A reset is safe to retry: sending the same reset again zeroes what is left and ends in the same state.',
        'When the counter store is unreachable for every user of the scope, 503 and nothing changed.',
        'Every reset, whatever its outcome, is recorded in the `admin_audit` table.',
      ].join('\n'),
      'x-body-optional': true,
      security,
      body: ResetBody,
      response: { 200: ResetResponse, ...errorResponses(400, 401, 403, 404, 413, 415, 503) },
    },
  }, async (request) => {
    const body = request.body ?? {}
    const target = { user_id: body.user_id?.toLowerCase() ?? null, metric: body.metric ?? null }
    return logged(request, 'manual-reset', target, async () => {
      const summary = await admin.reset({ userId: body.user_id, metric: body.metric, actor: actorOf(request) })
      if (!summary) throw new HttpError(404, 'Not found', `No user ${target.user_id ?? ''}`)
      return summary
    }, (summary) => (summary.complete ? 'ok' : 'partial'), (summary) => ({ summary }))
  })

  app.get('/users/:id/status', {
    schema: {
      tags: ['admin'],
      summary: "Any user's status",
      security,
      params: UserIdParams,
      response: { 200: StatusResponse, ...errorResponses(400, 401, 403, 404, 503) },
    },
  }, async (request) => {
    const status = await admin.userStatus(request.params.id)
    if (!status) throw new HttpError(404, 'Not found', `No user ${request.params.id.toLowerCase()}`)
    return status
  })

  app.put('/users/:id/tier', {
    schema: {
      tags: ['admin'],
      summary: "Changes a user's tier (applies to the next decision)",
      security,
      params: UserIdParams,
      body: TierBody,
      response: { 200: UserTierResponse, ...errorResponses(400, 401, 403, 404, 413, 415, 503) },
    },
  }, async (request) => {
    const target = { user_id: request.params.id.toLowerCase(), tier: request.body.tier }
    return logged(request, 'set-tier', target, async () => {
      const user = await admin.setUserTier(request.params.id, request.body.tier, actorOf(request))
      if (!user) throw new HttpError(404, 'Not found', `No user ${target.user_id}`)
      return { user_id: user.id, username: user.username, tier: user.tier }
    }, () => 'ok')
  })

  app.get('/limits', {
    schema: {
      tags: ['admin'],
      summary: 'Every tier\'s limits (null = unlimited)',
      security,
      response: { 200: LimitsListResponse, ...errorResponses(401, 403, 503) },
    },
  }, async () => ({ tiers: (await admin.listLimits()).map(limitsBody) }))

  app.put('/limits/:tier', {
    schema: {
      tags: ['admin'],
      summary: "Edits a tier's limits (null = unlimited; absent = unchanged)",
      security,
      params: TierParams,
      body: LimitsBody,
      response: { 200: TierLimitsSchema, ...errorResponses(400, 401, 403, 404, 413, 415, 503) },
    },
  }, async (request) => {
    for (const [column, value] of Object.entries(request.body)) {
      if (typeof value === 'number' && Math.round(value * 1e6) / 1e6 !== value) {
        throw new HttpError(400, 'Invalid request', `body/${column} must have at most 6 decimal places`, { field: column })
      }
    }
    const target = { tier: request.params.tier }
    return logged(request, 'update-limits', target,
      async () => limitsBody(await admin.updateLimits(request.params.tier, request.body, actorOf(request))),
      () => 'ok', () => ({ limits: request.body }))
  })

  // ---- Reports: the spec's monitoring queries as JSON, from daily_usage (they trail the live
  // counters by at most one flush interval) ----

  app.get('/top', {
    schema: {
      tags: ['admin'],
      summary: "The spec's \"Today's Top Users\": a day's users, the largest use of a metric first",
      description: 'Defaults: today (UTC), `api_calls`, 10 users. Read from daily_usage: at most one flush interval behind the live counters.',
      security,
      querystring: TopQuery,
      response: { 200: TopUsersResponse, ...errorResponses(400, 401, 403, 503) },
    },
  }, async (request) => {
    const { date, metric = 'api_calls', limit } = request.query
    if (date !== undefined && !isDay(date)) throw badQuery('date', 'querystring/date must be a day that exists, YYYY-MM-DD')
    return admin.topUsers({ day: date, metric, limit: wholeIn(limit, 10, 1, 1000, 'limit') })
  })

  app.get('/near-limits', {
    schema: {
      tags: ['admin'],
      summary: "The spec's \"Users Near Limits\": today's users over threshold x limit in a limited metric",
      description: 'Every metric with a limit is compared (an unlimited one never is); `threshold` defaults to 0.8, as the spec. Each user lists every limited metric with `near` set on those over.',
      security,
      querystring: NearLimitsQuery,
      response: { 200: NearLimitsResponse, ...errorResponses(400, 401, 403, 503) },
    },
  }, async (request) => {
    const threshold = request.query.threshold === undefined ? 0.8 : Number(request.query.threshold)
    if (!(threshold > 0 && threshold <= 10)) throw badQuery('threshold', 'querystring/threshold must be > 0 and <= 10')
    return admin.nearLimits({ threshold, limit: wholeIn(request.query.limit, 100, 1, 1000, 'limit') })
  })

  app.get('/history', {
    schema: {
      tags: ['admin'],
      summary: "The spec's \"Historical Usage\": per day, from `days` days ago through today",
      description: 'Of everyone, or of `user_id`. Newest first; a day without any usage is absent (as in the spec).',
      security,
      querystring: HistoryQuery,
      response: { 200: HistoryResponse, ...errorResponses(400, 401, 403, 503) },
    },
  }, async (request) => {
    const days = wholeIn(request.query.days, 7, 1, 366, 'days')
    return admin.usageHistory({ days, userId: request.query.user_id })
  })

  app.get('/events', {
    schema: {
      tags: ['admin'],
      summary: 'Threshold events (a daily metric of a user reaching 80 % or 100 % of its limit), oldest first',
      description: [
        'Events with an id above `after` (default 0), at most `limit` (1-1000, default 100), each with the webhook body\'s fields',
        'and its delivery state. Page or poll by passing `next_after` as `after`. docs/events.md has the semantics and the re-arm rules.',
      ].join('\n'),
      security,
      querystring: EventsQuery,
      response: { 200: EventsResponse, ...errorResponses(400, 401, 403, 503) },
    },
  }, async (request) => {
    const after = wholeIn(request.query.after, 0, 0, Number.MAX_SAFE_INTEGER, 'after')
    const rows = await admin.listEvents(after, wholeIn(request.query.limit, 100, 1, 1000, 'limit'))
    return { events: rows.map(eventBody), next_after: rows.at(-1)?.id ?? after }
  })
}

function eventBody(row: EventRow) {
  const delivery: 'delivered' | 'gave_up' | 'pending' = row.delivered_at !== null ? 'delivered' : row.gave_up_at !== null ? 'gave_up' : 'pending'
  return { ...row, type: 'usage.threshold' as const, current: Number(row.current), limit: Number(row.limit), delivery }
}

export default adminRoutes

function badQuery(field: string, message: string): HttpError {
  return new HttpError(400, 'Invalid request', message, { field })
}

/** A query parameter already matched as digits, as a whole number within [min, max]. */
function wholeIn(value: string | undefined, fallback: number, min: number, max: number, field: string): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < min || n > max) throw badQuery(field, `querystring/${field} must be a whole number from ${min} to ${max}`)
  return n
}

/** YYYY-MM-DD of a day that exists (not 2026-02-30). */
function isDay(value: string): boolean {
  const ms = Date.parse(`${value}T00:00:00Z`)
  return Number.isFinite(ms) && new Date(ms).toISOString().slice(0, 10) === value
}

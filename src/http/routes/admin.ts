/**
 * Admin routes under /api/usage/admin: manual reset, any user's status, a user's tier, tier limits.
 * The work is the admin service's (usage/admin.ts); these routes validate, authorise and render.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { TierLimitsRow } from '../../db/usage-limits.ts'
import { HttpError } from '../errors.ts'
import {
  LimitsBody, LimitsListResponse, ResetBody, ResetResponse, StatusResponse, TierBody, TierLimitsSchema, TierParams,
  UserIdParams, UserTierResponse, errorResponses,
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

const adminRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { admin } = app.quota
  app.addHook('onRequest', app.requireAdmin)

  app.post('/manual-reset', {
    // The spec's curl sends no body at all: that means "everyone, every daily metric".
    preValidation: async (request) => {
      if (request.body === undefined || request.body === null) request.body = {}
    },
    schema: {
      tags: ['admin'],
      summary: "Zeroes today's counters of one user / one metric / everyone, in Redis and Postgres",
      description: 'Without `user_id`, everyone; without `metric`, the daily metrics (the storage gauge only when named). The body may be left out: the spec\'s curl sends none.',
      'x-body-optional': true,
      security,
      body: ResetBody,
      response: { 200: ResetResponse, ...errorResponses(400, 401, 403, 413, 415, 503) },
    },
  }, async (request) => {
    const body = request.body ?? {}
    const summary = await admin.reset({ userId: body.user_id, metric: body.metric })
    request.log.info({ summary }, 'manual usage reset')
    return summary
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
    const user = await admin.setUserTier(request.params.id, request.body.tier)
    if (!user) throw new HttpError(404, 'Not found', `No user ${request.params.id.toLowerCase()}`)
    return { user_id: user.id, username: user.username, tier: user.tier }
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
    return limitsBody(await admin.updateLimits(request.params.tier, request.body))
  })
}

export default adminRoutes

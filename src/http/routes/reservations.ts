/**
 * Reservation routes under /api/usage/reservations: reserve an estimate (201, or the 429 of
 * consume), then commit the actual amount or cancel. Only the holder settles: another user's id
 * is not found, as an unknown or lapsed one is.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdempotencyConflictError, ReservationNotFoundError, ReservationSettledError } from '../../usage/errors.ts'
import type { SettleResult } from '../../usage/reservations.ts'
import { HttpError } from '../errors.ts'
import { sendLimitExceeded } from '../limit-response.ts'
import { CancelResponse, CommitBody, CommitResponse, ReservationParams, ReserveBody, ReserveResponse } from '../reservation-schemas.ts'
import { ErrorResponse, LimitExceededResponse, errorResponses } from '../schemas.ts'

const security = [{ bearerAuth: [] }]
const notFound = { 404: { ...ErrorResponse, description: 'No open reservation with this id (unknown, expired, or another user\'s)' } }
const settled = { 409: { ...ErrorResponse, description: 'Committed already (cancel) or cancelled already (commit)' } }

function rethrow(err: unknown): never {
  if (err instanceof ReservationNotFoundError) throw new HttpError(404, 'Reservation not found', err.message, { reservation_id: err.reservationId })
  if (err instanceof ReservationSettledError) throw new HttpError(409, 'Reservation settled', err.message, { reservation_id: err.reservationId })
  if (err instanceof IdempotencyConflictError) throw new HttpError(422, 'Idempotency key reuse', err.message, { field: 'idempotency_key' })
  throw err
}

function metricFields(result: SettleResult) {
  const { state } = result
  return { metric: result.metric, date: result.day, current: state.current, limit: state.limit, remaining: state.remaining, reserved: state.reserved }
}

const reservationRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/reservations', {
    onRequest: app.requireUser,
    schema: {
      tags: ['usage'],
      summary: 'Holds an estimate against today\'s limit (pattern 3 without its race)',
      security,
      body: ReserveBody,
      response: { 201: ReserveResponse, 429: LimitExceededResponse, ...errorResponses(400, 401, 413, 415, 422, 503) },
    },
  }, async (request, reply) => {
    const { metric, amount, ttl_seconds: ttlSeconds, idempotency_key: idempotencyKey } = request.body
    const result = await app.usage.reservations.reserve(request.user.id, metric, amount, { ttlSeconds, idempotencyKey }).catch(rethrow)
    if (result.replayed) reply.header('idempotent-replayed', 'true')
    if (result.denial) return sendLimitExceeded(reply, result.denial, app.usage.clock.now())
    const { state } = result
    return reply.code(201).send({
      reservation_id: result.reservationId ?? '', metric, amount, expires_at: result.expiresAt ?? '', tier: result.tier, date: result.day,
      current: state.current, limit: state.limit, remaining: state.remaining, reserved: state.reserved,
    })
  })

  app.post('/reservations/:id/commit', {
    onRequest: app.requireUser,
    schema: {
      tags: ['usage'],
      summary: 'Settles a reservation with the actual amount: the hold is released, the actual recorded',
      security,
      params: ReservationParams,
      body: CommitBody,
      response: { 200: CommitResponse, ...notFound, ...settled, ...errorResponses(400, 401, 413, 415, 503) },
    },
  }, async (request, reply) => {
    const result = await app.usage.reservations.commit(request.user.id, request.params.id, request.body.amount).catch(rethrow)
    if (result.replayed) reply.header('idempotent-replayed', 'true')
    return { reservation_id: result.reservationId, held: result.held, amount: result.amount, exceeded_hold: result.exceededHold, ...metricFields(result) }
  })

  app.delete('/reservations/:id', {
    onRequest: app.requireUser,
    schema: {
      tags: ['usage'],
      summary: 'Releases a reservation; records nothing',
      security,
      params: ReservationParams,
      response: { 200: CancelResponse, ...notFound, ...settled, ...errorResponses(401, 503) },
    },
  }, async (request, reply) => {
    const result = await app.usage.reservations.cancel(request.user.id, request.params.id).catch(rethrow)
    if (result.replayed) reply.header('idempotent-replayed', 'true')
    return { reservation_id: result.reservationId, released: result.held, ...metricFields(result) }
  })
}

export default reservationRoutes

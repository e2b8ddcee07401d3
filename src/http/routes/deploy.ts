/**
 * The demo route (DEMO_ROUTES=true): one deployment, guarded in one line.
 */
import { randomUUID } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { guardResult } from '../plugin.ts'
import { LimitExceededResponse, errorResponses } from '../schemas.ts'

const DeployResponse = Type.Object({
  deployment_id: Type.String({ format: 'uuid' }),
  degraded: Type.Optional(Type.Boolean({ description: 'Admitted without counting: Redis was unreachable and USAGE_FAIL_MODE=open' })),
}, { description: 'Deployment created; 1 deployment counted (RateLimit-* headers tell what is left)' })

const deployRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/api/deploy', {
    onRequest: app.requireUser,
    preHandler: app.requireUsageLimit('deployments', 1),
    schema: {
      tags: ['demo'],
      summary: 'Creates a (pretend) deployment; costs 1 deployment',
      security: [{ bearerAuth: [] }],
      response: { 201: DeployResponse, 429: LimitExceededResponse, ...errorResponses(400, 401, 413, 415, 503) },
    },
  }, async (request, reply) => reply.code(201).send({
    deployment_id: randomUUID(),
    ...(guardResult(request)?.degraded ? { degraded: true } : {}),
  }))
}

export default deployRoutes

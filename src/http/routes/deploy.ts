/**
 * The demo route of DESIGN 1.8 (DEMO_ROUTES=true): one deployment, guarded in one line.
 */
import { randomUUID } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { LimitExceededResponse, commonErrors } from '../schemas.ts'

const deployRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/api/deploy', {
    onRequest: app.requireUser,
    preHandler: app.requireUsageLimit('deployments', 1),
    schema: {
      tags: ['demo'],
      summary: 'Creates a (pretend) deployment; costs 1 deployment',
      security: [{ bearerAuth: [] }],
      response: { 201: Type.Object({ deployment_id: Type.String() }), 429: LimitExceededResponse, ...commonErrors },
    },
  }, async (_request, reply) => reply.code(201).send({ deployment_id: randomUUID() }))
}

export default deployRoutes

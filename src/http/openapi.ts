/**
 * OpenAPI 3 document generated from the routes' TypeBox schemas, served at /docs/json, with
 * Swagger UI at /docs. Registered before the routes so @fastify/swagger sees every one.
 */
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

async function openapi(app: FastifyInstance): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'quota',
        description: 'Redis-first usage quotas with Postgres history. Every error body is {"detail": {"error", "message", ...}}.',
        version: '0.1.0',
      },
      components: {
        securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } },
      },
      tags: [
        { name: 'usage', description: "The caller's own quota" },
        { name: 'admin', description: 'Requires an admin token' },
        { name: 'demo', description: 'DEMO_ROUTES=true' },
        { name: 'operations', description: 'Liveness and readiness' },
      ],
    },
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
}

export default fp(openapi, { fastify: '5.x', name: 'quota-openapi' })

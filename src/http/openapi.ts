/**
 * OpenAPI 3 document generated from the routes' TypeBox schemas, served at /docs/json, with
 * Swagger UI at /docs. Registered before the routes so @fastify/swagger sees every one.
 * With `docs: false` (DOCS_ENABLED=false) neither is served: /docs and /docs/json are 404.
 *
 * The UI routes replace the API's strict Content-Security-Policy with DOCS_CSP, which lets the
 * page load its own scripts, styles and the document (security-headers.ts).
 */
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { DOCS_CSP } from './security-headers.ts'

declare module 'fastify' {
  interface FastifySchema {
    /** The route accepts a request without any body (documented as `requestBody.required: false`). */
    'x-body-optional'?: boolean
  }
}

type Operation = { requestBody?: { required?: boolean }; 'x-body-optional'?: boolean }

/** @fastify/swagger marks every body required; honour the routes that say otherwise. */
function markOptionalBodies(paths: Record<string, Record<string, unknown> | undefined>): void {
  for (const item of Object.values(paths)) {
    for (const operation of Object.values(item ?? {}) as Operation[]) {
      if (typeof operation !== 'object' || operation === null || !operation['x-body-optional']) continue
      delete operation['x-body-optional']
      if (operation.requestBody) operation.requestBody.required = false
    }
  }
}

export interface OpenapiOptions {
  /** Serve /docs and /docs/json. @default true */
  docs?: boolean
}

async function openapi(app: FastifyInstance, options: OpenapiOptions): Promise<void> {
  await app.register(swagger, {
    transformObject(document) {
      if (!('openapiObject' in document)) return document.swaggerObject
      const doc = document.openapiObject
      if (doc.paths) markOptionalBodies(doc.paths as Record<string, Record<string, unknown>>)
      return doc
    },
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
  if (options.docs === false) return
  // staticCSP: set on every answer of the UI's routes (page, assets, /docs/json), after helmet's.
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: DOCS_CSP })
}

export default fp(openapi, { fastify: '5.x', name: 'quota-openapi' })

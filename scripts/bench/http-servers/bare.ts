/** The bare route: Fastify and the route's own work, no limiter — the ratio's denominator. */
import { answer } from './variant.ts'
import type { BuildVariant } from './variant.ts'

export const buildBare: BuildVariant = async (app) => {
  app.get('/', answer)
  return async () => {}
}

/**
 * Request ids: an `X-Request-Id` sent by the client (a proxy's trace id) is kept only when it is
 * 1 to 128 characters of letters, digits, `.`, `_`, `:` and `-`; anything else (longer, spaces,
 * control characters, several ids joined by a proxy) is replaced by a new UUID. The id used is
 * the log's `reqId` and is echoed in the `X-Request-Id` response header.
 */
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'

/** What a client-supplied request id may look like (documented in README, Security). */
export const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** The id of a request: its `x-request-id` when safe, else a new UUID (Fastify's `genReqId`). */
export function requestId(req: Pick<IncomingMessage, 'headers'>): string {
  const given = req.headers['x-request-id']
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID()
}

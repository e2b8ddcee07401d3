/**
 * Bodies are UTF-8 JSON, uncompressed (RFC 8259 8.1). Fastify's JSON parser reads every
 * `application/json` body as UTF-8 whatever its `charset` says and ignores `Content-Encoding`, so
 * a UTF-16 or gzip body would be misread; such requests are refused with 415 before the body is
 * parsed — and so before anything is counted (routes that authenticate in onRequest answer a
 * missing token first, as for any other 415).
 *
 * - `Content-Encoding`: absent or `identity` only; anything else is 415 with `Accept-Encoding:
 *   identity` (RFC 7694 3).
 * - `application/json` with a `charset` parameter: only `utf-8` (any case, quoted or not; `utf8`
 *   too). Other media types are refused by the content-type parsers as before.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { HttpError } from './errors.ts'

const UTF8 = new Set(['utf-8', 'utf8'])

/** For a message: printable ASCII only, bounded. */
function shown(value: string): string {
  return value.replace(/[^\x20-\x7e]/g, '?').slice(0, 40)
}

function hasBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length']
  return request.headers['transfer-encoding'] !== undefined || (length !== undefined && length.trim() !== '0')
}

/** The media type and the `charset` parameter of a Content-Type (lower case, quotes removed). */
export function parseContentType(header: string): { mediaType: string; charset?: string } {
  const [type = '', ...params] = header.split(';')
  let charset: string | undefined
  for (const param of params) {
    const eq = param.indexOf('=')
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'charset') continue
    charset = param.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1').trim().toLowerCase()
  }
  return { mediaType: type.trim().toLowerCase(), ...(charset !== undefined && { charset }) }
}

/** Throws the 415 for a body this service would misread; returns for any other request. */
export function checkBodyEncoding(request: FastifyRequest): void {
  if (!hasBody(request)) return
  const encoding = request.headers['content-encoding']
  if (encoding !== undefined) {
    const codings = encoding.split(',').map((c) => c.trim().toLowerCase()).filter((c) => c !== '')
    const unsupported = codings.find((c) => c !== 'identity')
    if (unsupported !== undefined) {
      throw new HttpError(415, 'Unsupported media type',
        `Content-Encoding ${shown(unsupported)} is not supported; send the body uncompressed`,
        { encoding: shown(unsupported) }, { 'Accept-Encoding': 'identity' })
    }
  }
  const contentType = request.headers['content-type']
  if (contentType === undefined) return
  const { mediaType, charset } = parseContentType(contentType)
  if (mediaType === 'application/json' && charset !== undefined && !UTF8.has(charset)) {
    throw new HttpError(415, 'Unsupported media type',
      `Content-Type charset ${shown(charset)} is not supported; send application/json encoded as UTF-8`,
      { charset: shown(charset) })
  }
}

/** Installs the check as a root preParsing hook: it runs for every route, before any body parser. */
export function registerBodyEncodingCheck(app: FastifyInstance): void {
  app.addHook('preParsing', async (request, _reply, payload) => {
    checkBodyEncoding(request)
    return payload
  })
}

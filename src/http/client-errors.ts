/**
 * Errors raised before Fastify sees a request — by Node's HTTP parser (headers too large,
 * Content-Length with Transfer-Encoding, a duplicate Content-Length, an unknown method) or by its
 * request/headers timeouts — answered with the same envelope as every other error,
 * written on the raw socket with the security headers helmet would have added and a request id.
 * The connection is closed afterwards: after a parse error its byte stream cannot be trusted.
 */
import { randomUUID } from 'node:crypto'
import { STATUS_CODES, maxHeaderSize } from 'node:http'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import type { HttpConfig } from '../config.ts'
import { errorBody } from './errors.ts'
import { RAW_SECURITY_HEADERS } from './security-headers.ts'

/** What Node hands to `clientError`: an Error with a code, for parser errors also llhttp's reason. */
export interface ClientError extends Error {
  code?: string
  reason?: string
}

export interface ClientErrorAnswer {
  status: number
  title: string
  message: string
}

/** Node's own mapping (408 / 431 / 413 / 400), with a sentence saying what was wrong. */
export function classifyClientError(err: ClientError, http: Pick<HttpConfig, 'requestTimeoutMs' | 'headersTimeoutMs'>): ClientErrorAnswer {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return {
        status: 408,
        title: 'Request timeout',
        message: `The request was not received in time: headers must arrive within ${http.headersTimeoutMs} ms ` +
          `and the whole request within ${http.requestTimeoutMs} ms`,
      }
    case 'HPE_HEADER_OVERFLOW':
      return { status: 431, title: 'Request header fields too large', message: `Request headers exceed ${maxHeaderSize} bytes` }
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return { status: 413, title: 'Payload too large', message: 'Chunk extensions of the request body are too large' }
  }
  // llhttp's reasons are fixed strings ("Invalid method encountered", "Duplicate Content-Length"...).
  const reason = typeof err.reason === 'string' ? err.reason.replace(/[^\x20-\x7e]/g, '').slice(0, 100) : ''
  return {
    status: 400,
    title: 'Bad request',
    message: reason ? `Malformed HTTP request: ${reason}` : 'Malformed HTTP request',
  }
}

/** Headers and body of an envelope answer made without Fastify; the connection closes after it. */
export function errorResponseParts(answer: ClientErrorAnswer, requestId: string): { headers: Record<string, string>; body: string } {
  const body = JSON.stringify(errorBody(answer.title, answer.message))
  const headers: Record<string, string> = {
    ...RAW_SECURITY_HEADERS,
    'x-request-id': requestId,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close',
  }
  return { headers, body }
}

/** A complete HTTP/1.1 answer carrying the envelope; the connection closes after it. */
export function rawErrorResponse(answer: ClientErrorAnswer, requestId: string): string {
  const { headers, body } = errorResponseParts(answer, requestId)
  const lines = Object.entries({ ...headers, date: new Date().toUTCString() }).map(([name, value]) => `${name}: ${value}`)
  return `HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status] ?? 'Error'}\r\n${lines.join('\r\n')}\r\n\r\n${body}`
}

/**
 * Fastify's `clientErrorHandler` (bound to the instance). Answers only when nothing of a response
 * has been written on the socket yet (as Node does), then destroys the socket.
 */
export function createClientErrorHandler(http: Pick<HttpConfig, 'requestTimeoutMs' | 'headersTimeoutMs'>) {
  return function quotaClientError(this: FastifyInstance, err: ClientError, socket: Socket): void {
    // A reset connection is gone: nothing to answer, nothing worth a log line.
    if (err.code === 'ECONNRESET' || socket.destroyed) return
    const answer = classifyClientError(err, http)
    const requestId = randomUUID()
    this.log.info({ reqId: requestId, statusCode: answer.status, code: err.code, reason: answer.message }, 'client error')
    const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage
    if (socket.writable && !inFlight?.headersSent) socket.write(rawErrorResponse(answer, requestId))
    socket.destroy()
  }
}

/** For a message: printable ASCII only, bounded. */
const shown = (value: string): string => value.replace(/[^\x20-\x7e]/g, '?').slice(0, 60)

/**
 * The other answers Node's HTTP server would write by itself, without a body: a 417 for an
 * `Expect` other than 100-continue, and CONNECT (a proxy method this service does not serve),
 * which Node would drop without an answer. Both get the envelope and close the connection.
 */
export function handleServerLevelRequests(server: Server, log: FastifyInstance['log']): void {
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const answer = {
      status: 417,
      title: 'Expectation failed',
      message: `Expect: ${shown(String(req.headers.expect))} is not supported; only 100-continue is`,
    }
    const requestId = randomUUID()
    log.info({ reqId: requestId, statusCode: 417, method: req.method, url: req.url }, 'request refused')
    const { headers, body } = errorResponseParts(answer, requestId)
    res.writeHead(417, headers)
    res.end(body)
  })
  server.on('connect', (req: IncomingMessage, socket: Duplex) => {
    const answer = { status: 405, title: 'Method not allowed', message: 'CONNECT is not supported by this service' }
    const requestId = randomUUID()
    log.info({ reqId: requestId, statusCode: 405, method: req.method }, 'request refused')
    if (socket.writable) socket.write(rawErrorResponse(answer, requestId))
    socket.destroy()
  })
}

/**
 * The error envelope of the API (README, API): every non-2xx body is
 * `{"detail": {"error": "<title>", "message": "<sentence>", ...extra}}`.
 *
 * Errors are classified in ONE place (the handler below): routes and plugins throw, and never
 * build error bodies themselves. 5xx answers never carry the raw message or stack.
 */
import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { InvalidAmountError } from '../metrics.ts'
import { IdempotencyKeyLimitError, TotalTooLargeError, UnknownTierError, UsageUnavailableError } from '../usage/errors.ts'

export interface ErrorBody {
  detail: { error: string; message: string; [key: string]: unknown }
}

/** Builds an envelope. `extra` cannot override `error` or `message`. */
export function errorBody(error: string, message: string, extra: Record<string, unknown> = {}): ErrorBody {
  const detail: ErrorBody['detail'] = { error, message }
  for (const key in extra) {
    if (key !== 'error' && key !== 'message') detail[key] = extra[key]
  }
  return { detail }
}

/** An error that already knows its answer: status, title, sentence, extra fields, headers. */
export class HttpError extends Error {
  override name = 'HttpError'
  constructor(
    readonly statusCode: number,
    /** The envelope's `error`, e.g. "Unauthorized". */
    readonly title: string,
    message: string,
    /** Extra fields of the envelope. */
    readonly extra: Record<string, unknown> = {},
    /** Response headers, e.g. `WWW-Authenticate`. */
    readonly headers: Record<string, string> = {},
  ) {
    super(message)
  }
}

interface ValidationIssue {
  instancePath?: string
  keyword?: string
  message?: string
  params?: Record<string, unknown>
}

const article = (word: string): string => (/^[aeiou]/i.test(word) ? `an ${word}` : `a ${word}`)

/** "/metrics/deployments" -> "metrics.deployments" (JSON pointer unescaped). */
function pointerToPath(pointer: string): string {
  return pointer
    .split('/')
    .filter((s) => s !== '')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .join('.')
}

/**
 * Turns an Ajv (or TypeBox, same shape) validation error into `{ field, message }` that reads
 * well: "body/amount must be number" -> field "amount", "amount must be a number".
 */
export function describeValidation(issue: ValidationIssue, context: string | undefined): { field: string; message: string } {
  const params = issue.params ?? {}
  let path = pointerToPath(issue.instancePath ?? '')
  let text = issue.message ?? 'is invalid'
  switch (issue.keyword) {
    case 'required':
      path = [path, String(params.missingProperty ?? params.requiredProperties ?? '')].filter(Boolean).join('.')
      text = 'is required'
      break
    case 'additionalProperties':
      path = [path, String(params.additionalProperty ?? '')].filter(Boolean).join('.')
      text = 'is not an accepted property'
      break
    case 'type':
      text = `must be ${String(params.type).split(',').map(article).join(' or ')}`
      break
    case 'enum':
      if (Array.isArray(params.allowedValues)) text = `must be one of ${params.allowedValues.map(String).join(', ')}`
      break
    case 'const':
      text = `must be ${JSON.stringify(params.allowedValue)}`
      break
    case 'format':
      text = params.format === 'uuid' ? 'must be a UUID' : `must be a valid ${String(params.format)}`
      break
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum': {
      const words: Record<string, string> = { '>': 'greater than', '>=': 'at least', '<': 'less than', '<=': 'at most' }
      const comparison = words[String(params.comparison)]
      if (comparison) text = `must be ${comparison} ${String(params.limit)}`
      break
    }
    case 'minLength':
      text = `must be at least ${String(params.limit)} characters long`
      break
    case 'maxLength':
      text = `must be at most ${String(params.limit)} characters long`
      break
  }
  // Fields of the body are named bare ("amount"); other parts keep their location ("params.id").
  const location = context && context !== 'body' ? context : ''
  const field = [location, path].filter(Boolean).join('.') || context || 'body'
  return { field, message: `${field} ${text}` }
}

/**
 * The issue to report. For a union of constants (`metric`), Ajv lists one "must be equal to
 * constant" per branch and then the anyOf failure; report the union as "one of a, b".
 */
function pickIssue(issues: ValidationIssue[]): ValidationIssue {
  const union = issues.find((i) => i.keyword === 'anyOf' || i.keyword === 'oneOf')
  if (union) {
    const allowed = issues
      .filter((i) => i.instancePath === union.instancePath && (i.keyword === 'const' || i.keyword === 'enum'))
      .flatMap((i) => (i.keyword === 'const' ? [i.params?.allowedValue] : (i.params?.allowedValues as unknown[]) ?? []))
    if (allowed.length > 0) return { instancePath: union.instancePath, keyword: 'enum', params: { allowedValues: allowed } }
  }
  return issues[0] as ValidationIssue
}

function send(reply: FastifyReply, status: number, body: ErrorBody, headers: Record<string, string> = {}): FastifyReply {
  return reply.code(status).headers(headers).send(body)
}

/** Status code for an error we did not classify: its own 4xx if it has one, else 500. */
function fallbackStatus(error: FastifyError): number {
  const status = error.statusCode
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500
}

function handle(error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (error instanceof HttpError) {
    return send(reply, error.statusCode, errorBody(error.title, error.message, error.extra), error.headers)
  }
  if (error.validation && error.validation.length > 0) {
    const { field, message } = describeValidation(pickIssue(error.validation as ValidationIssue[]), error.validationContext)
    return send(reply, 400, errorBody('Invalid request', message, { field }))
  }
  if (error instanceof TotalTooLargeError) {
    return send(reply, 400, errorBody('Invalid request', error.message, { field: error.field, metric: error.metric, maximum: error.maximum }))
  }
  if (error instanceof IdempotencyKeyLimitError) {
    // Not the usage-limit 429 (no metric, tier or current): the route's 429 schema would drop or
    // demand fields, so this envelope is serialized as it is.
    reply.serializer((payload: unknown) => JSON.stringify(payload))
    return send(reply, 429, errorBody('Too many idempotency keys', error.message, { field: 'idempotency_key' }),
      { 'Retry-After': String(error.retryAfterSeconds) })
  }
  if (error instanceof InvalidAmountError) {
    return send(reply, 400, errorBody('Invalid request', error.message, { field: error.field }))
  }
  if (error instanceof UsageUnavailableError) {
    // Warn, not error: while Redis is down every request lands here; the service logs the cause once.
    request.log.warn({ reqId: request.id, method: request.method, url: request.url, reason: error.message }, 'usage unavailable')
    return send(reply, 503, errorBody('Service not available', error.message), { 'Retry-After': '1' })
  }
  if (error instanceof UnknownTierError) {
    // A tier named in the URL (PUT /admin/limits/:tier) is a missing resource; one in the body is bad input.
    const params = request.params as Record<string, unknown> | undefined
    if (params?.tier === error.tier) return send(reply, 404, errorBody('Not found', error.message, { tier: error.tier }))
    return send(reply, 400, errorBody('Invalid request', error.message, { field: 'tier', tier: error.tier }))
  }
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return send(reply, 415, errorBody('Unsupported media type',
        `Content-Type ${(request.headers['content-type'] ?? '(none)').slice(0, 100)} is not supported; send application/json`))
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return send(reply, 413, errorBody('Payload too large',
        `Request body exceeds ${request.routeOptions.bodyLimit ?? 16384} bytes`))
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return send(reply, 400, errorBody('Invalid JSON', 'Request body is empty but Content-Type is application/json'))
    // Fastify 5 reports syntax errors and prototype poisoning (`__proto__`, `constructor.prototype`) alike.
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return send(reply, 400, errorBody('Invalid JSON', 'Request body is not valid JSON (or contains a forbidden __proto__ or constructor key)'))
  }
  const status = fallbackStatus(error)
  if (status < 500) {
    // Fastify's own 4xx (bad Content-Length, bad URL, ...) carry safe, fixed messages.
    return send(reply, status, errorBody(STATUS_CODES[status] ?? 'Bad request', error.message))
  }
  request.log.error({ err: error, reqId: request.id, method: request.method, url: request.url }, 'request failed')
  return send(reply, status, errorBody(status === 500 ? 'Internal server error' : (STATUS_CODES[status] ?? 'Server error'),
    'The server could not complete the request; it has been logged'))
}

/** Installs the one error handler and the 404 handler on `app` (call it on the root instance). */
export function registerErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler(function quotaErrorHandler(error: FastifyError, request, reply) {
    const result = handle(error, request, reply)
    if (reply.statusCode < 500) {
      request.log.info({ statusCode: reply.statusCode, code: error.code ?? error.name, reason: error.message }, 'request refused')
    }
    return result
  })
  app.setNotFoundHandler(function quotaNotFound(request, reply) {
    return send(reply, 404, errorBody('Not found', `Route ${request.method} ${request.url.split('?')[0]} not found`))
  })
}

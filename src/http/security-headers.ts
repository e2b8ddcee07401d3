/**
 * Security headers: helmet's on every answer, with a strict Content-Security-Policy for the JSON
 * API and a looser one for the Swagger UI page under /docs, plus the same set written by hand on
 * the raw answers to HTTP parser errors (client-errors.ts), which never reach helmet.
 */
import type { FastifyHelmetOptions } from '@fastify/helmet'

/**
 * The API only ever answers JSON: nothing may load, run, frame or be framed. A JSON answer opened
 * in a browser (or an error echoing input) can therefore never become a page.
 */
export const API_CSP_DIRECTIVES = {
  defaultSrc: ["'none'"],
  baseUri: ["'none'"],
  formAction: ["'none'"],
  frameAncestors: ["'none'"],
} as const

/** `API_CSP_DIRECTIVES` as helmet writes it (helmet joins directives with ";" and no space). */
export const API_CSP = "default-src 'none';base-uri 'none';form-action 'none';frame-ancestors 'none'"

/**
 * The Swagger UI page and its assets (all served by this service from /docs/static): its own
 * scripts and styles, the document fetched from /docs/json, the data: images and fonts of its
 * stylesheet. Inline styles are allowed (the UI sets some); inline scripts, eval, other origins
 * (no validator badge), plugins, forms and framing are not.
 */
export const DOCS_CSP = [
  "default-src 'none'",
  "base-uri 'none'",
  "connect-src 'self'",
  "font-src 'self' data:",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "img-src 'self' data:",
  "manifest-src 'self'",
  "object-src 'none'",
  "script-src 'self'",
  "script-src-attr 'none'",
  "style-src 'self' 'unsafe-inline'",
].join('; ')

/** helmet's defaults, framing denied outright, and the strict CSP. */
export const HELMET_OPTIONS: FastifyHelmetOptions = {
  global: true,
  frameguard: { action: 'deny' },
  contentSecurityPolicy: {
    useDefaults: false,
    directives: Object.fromEntries(Object.entries(API_CSP_DIRECTIVES).map(([k, v]) => [k, [...v]])),
  },
}

/**
 * What helmet adds to an API answer with HELMET_OPTIONS, for the answers written without it.
 * test/http/parser-errors.test.ts checks that the two stay the same.
 */
export const RAW_SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': API_CSP,
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'origin-agent-cluster': '?1',
  'referrer-policy': 'no-referrer',
  'strict-transport-security': 'max-age=31536000; includeSubDomains',
  'x-content-type-options': 'nosniff',
  'x-dns-prefetch-control': 'off',
  'x-download-options': 'noopen',
  'x-frame-options': 'DENY',
  'x-permitted-cross-domain-policies': 'none',
  'x-xss-protection': '0',
}

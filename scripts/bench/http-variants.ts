/**
 * The HTTP bench's variants: what each is called in the tables, which server process runs it
 * (http-servers/serve.ts), and whether its users are over the limit. Apart from http.ts so the
 * smoke test can read the names without loading the bench.
 */
import type { ServerName } from './http-servers/serve.ts'

export interface Variant {
  name: string
  server: ServerName
  over: boolean
}

/** Bare first: every round's ratios are taken against its bare run. */
export const VARIANTS: readonly Variant[] = [
  { name: 'bare', server: 'bare', over: false },
  { name: 'plain Lua', server: 'plain-lua', over: false },
  { name: 'quota', server: 'quota', over: false },
  { name: 'quota + metrics', server: 'quota-metrics', over: false },
  { name: 'quota embedded', server: 'quota-embedded', over: false },
  { name: '@fastify/rate-limit', server: 'frl', over: false },
  { name: 'rate-limiter-flexible', server: 'rlf', over: false },
  { name: 'quota (over limit)', server: 'quota', over: true },
  { name: '@fastify/rate-limit (over limit)', server: 'frl', over: true },
  { name: 'rate-limiter-flexible (over limit)', server: 'rlf', over: true },
]

/**
 * The smoke run's variants: each server module once, a peer's and quota's over-limit paths, and
 * no more. Every server costs seconds of CPU to start (quota's engine ~4 s under tsx), and the
 * smoke run shares a busy 2-core machine with the rest of `npm test`.
 */
export const SMOKE_VARIANTS = [
  'bare', 'plain Lua', 'quota', 'quota embedded', '@fastify/rate-limit', 'rate-limiter-flexible (over limit)', 'quota (over limit)',
] as const

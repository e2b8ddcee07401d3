/**
 * GET /dashboard: the operators' page, served by the service itself. One HTML page, one script
 * and one stylesheet (src/http/dashboard/, no build step), and uPlot's script and stylesheet from
 * node_modules (no CDN). The page is public; its data comes from the admin report routes, with
 * the admin token the operator types in (kept in the tab's sessionStorage, never in a URL).
 *
 * Every answer here carries DASHBOARD_CSP instead of the API's strict policy: the page may load
 * exactly its own scripts and styles, and call this origin.
 */
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import type { FastifyPluginAsync } from 'fastify'

/** The page's policy: same-origin scripts, styles and fetches only; no inline script, no framing. */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "base-uri 'none'",
  "connect-src 'self'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "img-src 'self' data:",
  "object-src 'none'",
  "script-src 'self'",
  "script-src-attr 'none'",
  "style-src 'self'",
].join('; ')

const require = createRequire(import.meta.url)
/** The page's own files: beside this folder in src/, copied to the same place in dist/ by the build. */
const PAGE_DIR = new URL('../dashboard/', import.meta.url)

interface Asset {
  path: string
  type: string
  file: URL | string
}

const ASSETS: Asset[] = [
  { path: '/dashboard', type: 'text/html; charset=utf-8', file: new URL('index.html', PAGE_DIR) },
  { path: '/dashboard/dashboard.js', type: 'text/javascript; charset=utf-8', file: new URL('dashboard.js', PAGE_DIR) },
  { path: '/dashboard/dashboard.css', type: 'text/css; charset=utf-8', file: new URL('dashboard.css', PAGE_DIR) },
  { path: '/dashboard/assets/uPlot.iife.min.js', type: 'text/javascript; charset=utf-8', file: require.resolve('uplot/dist/uPlot.iife.min.js') },
  { path: '/dashboard/assets/uPlot.min.css', type: 'text/css; charset=utf-8', file: require.resolve('uplot/dist/uPlot.min.css') },
]

const dashboardRoutes: FastifyPluginAsync = async (app) => {
  for (const asset of ASSETS) {
    // Read once at start-up: a missing file fails the start, not the first visit.
    const body = await readFile(asset.file)
    app.get(asset.path, { schema: { hide: true } }, async (_request, reply) => {
      return reply
        .header('content-security-policy', DASHBOARD_CSP)
        .header('cache-control', 'no-cache')
        .type(asset.type)
        .send(body)
    })
  }
}

export default dashboardRoutes

/**
 * Issue 11, finding 10 (part): helmet's Content-Security-Policy was off for the whole app. Every
 * API answer now carries a strict CSP; the Swagger UI under /docs carries one that lets its page
 * load its own scripts, styles and document and nothing else; DOCS_ENABLED=false removes /docs.
 */
import t from 'tap'
import { API_CSP, DOCS_CSP } from '../../src/http/security-headers.ts'
import { buildTestApp } from '../helpers/app.ts'
import { envelope } from './envelope.ts'

const h = await buildTestApp(t)
const user = h.user()

/** "a b; c d" -> { a: ['b'], c: ['d'] } (helmet separates with ";", the UI's with "; "). */
function directives(csp: unknown): Record<string, string[]> {
  const result: Record<string, string[]> = {}
  for (const part of String(csp).split(';')) {
    const [name, ...values] = part.trim().split(/\s+/)
    if (name) result[name] = values
  }
  return result
}

t.test('csp: every API answer carries the strict policy', async (t) => {
  const answers = await Promise.all([
    h.app.inject({ url: '/health' }),
    // No answer here depends on Redis (a loaded machine could turn it into a 503).
    h.app.inject({ url: '/api/usage/admin/limits', headers: user.headers }),
    h.app.inject({ url: '/api/usage/status' }),
    h.app.inject({ url: '/nope' }),
    h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: { ...user.headers, 'content-type': 'text/plain' }, payload: 'x' }),
  ])
  t.same(answers.map((r) => r.statusCode), [200, 403, 401, 404, 415])
  for (const res of answers) {
    t.equal(res.headers['content-security-policy'], API_CSP)
    t.equal(res.headers['x-frame-options'], 'DENY')
    t.equal(res.headers['x-content-type-options'], 'nosniff')
  }
  const policy = directives(API_CSP)
  t.same(policy['default-src'], ["'none'"], 'nothing may load')
  t.same(policy['frame-ancestors'], ["'none'"], 'nothing may frame it')
})

t.test('csp: the Swagger UI gets a policy that allows its own assets and nothing else', async (t) => {
  const page = await h.app.inject({ url: '/docs/' })
  t.equal(page.statusCode, 200)
  t.equal(page.headers['content-security-policy'], DOCS_CSP)
  const policy = directives(DOCS_CSP)
  t.same(policy['script-src'], ["'self'"], 'scripts: its own files only (no inline, no eval)')
  t.same(policy['connect-src'], ["'self'"], 'it fetches /docs/json')
  t.same(policy['frame-ancestors'], ["'none'"])
  t.same(policy['object-src'], ["'none'"])
  t.notOk(DOCS_CSP.includes('unsafe-eval'))

  // The page only works under that policy if all its scripts and stylesheets are same-origin files.
  const scripts = [...page.body.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)]
  t.ok(scripts.length > 0)
  for (const [, attributes = '', content = ''] of scripts) {
    const src = /\bsrc="([^"]+)"/.exec(attributes)?.[1]
    t.ok(src, 'every script is a file')
    t.equal(content.trim(), '', 'no inline script')
    t.notMatch(String(src), /^(https?:)?\/\//, `${src} is same-origin`)
  }
  t.notMatch(page.body, /\son[a-z]+=/i, 'no inline event handlers (script-src-attr none)')
  const links = [...page.body.matchAll(/<link\b[^>]*href="([^"]+)"/gi)].map((m) => m[1])
  for (const href of links) t.notMatch(String(href), /^(https?:)?\/\//, `${href} is same-origin`)

  // Every asset the page names is served, under the same policy.
  const assets = [...scripts.map(([, a = '']) => /\bsrc="([^"]+)"/.exec(a)?.[1]), ...links]
    .map((u) => new URL(String(u), 'http://quota/docs/').pathname)
  for (const url of [...assets, '/docs/json']) {
    const res = await h.app.inject({ url })
    t.equal(res.statusCode, 200, url)
    t.equal(res.headers['content-security-policy'], DOCS_CSP, url)
  }
  const init = await h.app.inject({ url: '/docs/static/swagger-initializer.js' })
  t.match(init.body, /validatorUrl: null/, 'no call to the external validator (img-src has no other origin)')
})

t.test('csp: DOCS_ENABLED=false serves no /docs at all', async (t) => {
  const off = await buildTestApp(t, { db: h.db, env: { DOCS_ENABLED: 'false' } })
  t.equal(off.config.docs, false)
  for (const url of ['/docs', '/docs/', '/docs/json', '/docs/yaml', '/docs/static/swagger-ui.css', '/docs/static/swagger-initializer.js']) {
    const res = await off.app.inject({ url })
    t.equal(res.statusCode, 404, url)
    t.equal(envelope(res.body).error, 'Not found')
    t.equal(res.headers['content-security-policy'], API_CSP)
  }
  t.equal((await off.app.inject({ url: '/health' })).statusCode, 200, 'the API is unaffected')
})

/**
 * GET /dashboard in a real browser: Debian's chromium, driven by playwright-core, against the
 * app listening on 127.0.0.1. With fixture usage (a few users' consumes, flushed to Postgres), an
 * admin token typed into the page fills the tables and draws the history charts; a wrong token
 * shows the API's error on the page. The filled page is screenshotted into a temporary folder;
 * with UPDATE_SCREENSHOT=1 into docs/dashboard.png, the picture README shows (a test run never
 * rewrites a tracked file unless asked to).
 */
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import type { Browser } from 'playwright-core'
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'

const CHROMIUM = '/usr/bin/chromium'
const DOCS_SCREENSHOT = fileURLToPath(new URL('../../docs/dashboard.png', import.meta.url))

t.test('the dashboard in chromium', async (t) => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: this test drives Debian's chromium (apt-get install chromium; .ci/run installs it)`)
  }
  let screenshot = DOCS_SCREENSHOT
  if (process.env.UPDATE_SCREENSHOT !== '1') {
    const dir = mkdtempSync(join(tmpdir(), 'quota-dashboard-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    screenshot = join(dir, 'dashboard.png')
  }
  const { app, user, admin } = await buildTestApp(t, { now: new Date().toISOString() })
  // Fixture usage: a few users' consumes, then a flush (the reports read daily_usage).
  const people = [
    { name: 'alice', deployments: 9, api_calls: 120 },
    { name: 'bob', deployments: 3, api_calls: 4200 },
    { name: 'carol', deployments: 1, api_calls: 40 },
  ]
  for (const p of people) {
    const u = user({ username: p.name })
    const res = await app.inject({
      method: 'POST', url: '/api/usage/consume', headers: u.headers,
      payload: { metrics: { deployments: p.deployments, api_calls: p.api_calls, compute_hours: 0.5 } },
    })
    t.equal(res.statusCode, 200, `${p.name} consumed`)
  }
  await app.quota.flusher.flushAll()

  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  })
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } })
  const problems: string[] = []
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(msg.text())
  })
  page.on('pageerror', (err) => problems.push(err.message))

  await page.goto(`${address}/dashboard`)
  t.match(await page.locator('#error').textContent(), /admin token/, 'asks for a token first')

  await t.test('an admin token fills the page', async (t) => {
    await page.fill('#token', admin().token)
    await page.click('#token-form button[type=submit]')
    await page.waitForSelector('body[data-loaded="true"]')
    t.notOk(page.url().includes('token') || page.url().includes('ey'), 'the token is not in the URL')
    t.ok(await page.evaluate(() => sessionStorage.getItem('quota.adminToken')), 'kept in sessionStorage')

    const topApi = await page.locator('#top [data-metric="api_calls"] tbody tr').allTextContents()
    t.same(topApi.map((r) => r.replace(/\s+/g, ' ')), ['bobfree4,200', 'alicefree120', 'carolfree40'], 'top users by api_calls')
    const topDeploys = await page.locator('#top [data-metric="deployments"] tbody tr td:first-child').allTextContents()
    t.same(topDeploys, ['alice', 'bob', 'carol'])
    const near = await page.locator('#near tbody tr td:first-child').allTextContents()
    t.same(near, ['alice', 'bob'], 'near limits: alice (9/10 deployments), bob (4200/5000 calls)')
    t.equal(await page.locator('#near tbody tr').first().locator('.bar.near').count(), 1, 'one bar over the threshold')
    const tiers = await page.locator('#limits tbody tr td:first-child').allTextContents()
    t.same([...tiers].sort(), ['enterprise', 'free', 'pro'])

    // The history charts drew: count non-blank pixels of each canvas.
    const painted = await page.evaluate(() => [...document.querySelectorAll('#history canvas')].map((c) => {
      const canvas = c as HTMLCanvasElement
      const data = canvas.getContext('2d')?.getImageData(0, 0, canvas.width, canvas.height).data ?? []
      let n = 0
      for (let i = 3; i < data.length; i += 4) if ((data[i] ?? 0) > 0) n++
      return n
    }))
    t.equal(painted.length, 4, 'one chart per metric')
    for (const n of painted) t.ok(n > 500, `a chart drew (${n} pixels)`)

    // Clicking a row narrows the history to that user.
    await page.click('#top [data-metric="api_calls"] tbody tr:first-child')
    await page.waitForFunction(() => document.getElementById('history-who')?.textContent === 'user bob')
    t.pass('history of one user')
    await page.click('#top [data-metric="api_calls"] tbody tr:first-child')
    await page.waitForFunction(() => document.getElementById('history-who')?.textContent === 'all users')

    await page.screenshot({ path: screenshot, fullPage: true })
    t.ok(statSync(screenshot).size > 10_000, 'a screenshot of the filled page')
    t.same(problems, [], 'no console error, no CSP violation')
  })

  await t.test('a wrong token shows the error', async (t) => {
    await page.fill('#token', 'not-a-token')
    await page.click('#token-form button[type=submit]')
    await page.waitForSelector('body[data-loaded="error"]')
    t.match(await page.locator('#error').textContent(), /^401/, 'the 401 message')
    await page.fill('#token', user().token)
    await page.click('#token-form button[type=submit]')
    await page.waitForFunction(() => /^403/.test(document.getElementById('error')?.textContent ?? ''))
    t.match(await page.locator('#error').textContent(), /403 — Forbidden/, 'a user token: the 403 message')
  })

  await t.test('the page has its own CSP', async (t) => {
    const res = await app.inject({ url: '/dashboard' })
    t.match(res.headers['content-security-policy'], /script-src 'self'/)
    t.notMatch(res.headers['content-security-policy'], /unsafe/)
    t.equal((await app.inject({ url: '/dashboard/assets/uPlot.iife.min.js' })).statusCode, 200)
  })
})

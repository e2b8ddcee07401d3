/**
 * The spec's curl commands (spec/usage-tracking-quick-reference.md, "Testing Locally") run as
 * written against the real server process: the command text is taken from the spec file itself,
 * only `<token>` / `<admin-token>` are substituted and `localhost:8000` points at the test
 * server's port. curl runs through bash exactly as a reader would paste it; the status code is
 * captured with a `.curlrc` (`-w`), so the command line itself stays untouched.
 */
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { createTestDatabase } from '../helpers/database.ts'
import { TEST_REDIS_URL, createTestRedis } from '../helpers/redis.ts'
import { startService } from '../helpers/service-process.ts'
import { signToken } from '../helpers/tokens.ts'

const run = promisify(execFile)
const SPEC = process.env.QUOTA_SPEC ?? '/work/shared/spec/usage-tracking-quick-reference.md'
const FLUSH_MS = 200

/** The bash code blocks of the spec that run curl, keyed by the heading above them. */
function specCurlCommands(markdown: string): Map<string, string> {
  const commands = new Map<string, string>()
  let heading = ''
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? ''
    if (line.startsWith('#')) heading = line.replace(/^#+\s*/, '').trim()
    if (line.trim() === '```bash') {
      const block: string[] = []
      for (i++; i < lines.length && lines[i]?.trim() !== '```'; i++) block.push(lines[i] ?? '')
      const text = block.join('\n')
      if (/^\s*curl\b/.test(text)) commands.set(heading, text)
    }
  }
  return commands
}

const spec = readFileSync(SPEC, 'utf8')
const commands = specCurlCommands(spec)

t.test('the spec lists the three curl commands this test runs', async (t) => {
  t.same([...commands.keys()].sort(), ['Check Specific Metric', 'Check Your Limits', 'Manual Reset (Admin Only)'])
})

t.test('spec curl commands against the real server', async (t) => {
  const db = await createTestDatabase(t)
  const redis = createTestRedis(t) // its key prefix is emptied at teardown
  const svc = await startService(t, { DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redis.prefix, FLUSH_INTERVAL_MS: String(FLUSH_MS) })
  const secret = svc.env.JWT_SECRET as string
  const userId = randomUUID()
  const userToken = signToken({ sub: userId, secret, username: 'spec-curl-user' })
  const adminToken = signToken({ sub: randomUUID(), secret, role: 'admin' })

  // curl reads $HOME/.curlrc: silent, and the status code on a last line of its own.
  const home = mkdtempSync(join(tmpdir(), 'quota-curl-'))
  t.teardown(() => rmSync(home, { recursive: true, force: true }))
  writeFileSync(join(home, '.curlrc'), 'silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')

  async function curl(heading: string): Promise<{ status: number; body: Record<string, unknown> }> {
    const written = commands.get(heading)
    if (written === undefined) throw new Error(`no curl command under "${heading}" in the spec`)
    const command = written
      .replaceAll('<admin-token>', adminToken)
      .replaceAll('<token>', userToken)
      .replaceAll('localhost:8000', `localhost:${svc.port}`)
    const { stdout } = await run('bash', ['-c', command], { env: { PATH: process.env.PATH, HOME: home }, timeout: 10_000 })
    const cut = stdout.lastIndexOf('\n')
    return { status: Number(stdout.slice(cut + 1)), body: JSON.parse(stdout.slice(0, cut)) as Record<string, unknown> }
  }

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${svc.baseUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${userToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    })
    return { status: res.status, body: (await res.json()) as Record<string, unknown> }
  }

  // Some usage first, so the answers carry non-trivial numbers.
  for (let i = 0; i < 3; i++) t.equal((await api('POST', '/api/deploy')).status, 201, 'deploy')
  t.equal((await api('POST', '/api/usage/consume', { metric: 'compute_hours', amount: 1.25 })).status, 200)
  t.equal((await api('POST', '/api/usage/increment', { metric: 'storage', amount: 0.5 })).status, 200)

  const today = new Date().toISOString().slice(0, 10)
  const midnight = new Date(Date.parse(`${today}T00:00:00Z`) + 86_400_000).toISOString()

  await t.test('Check Your Limits: GET /api/usage/status', async (t) => {
    const { status, body } = await curl('Check Your Limits')
    t.equal(status, 200)
    t.equal(body.user_id, userId)
    t.equal(body.tier, 'free')
    t.equal(body.date, today)
    t.equal(body.resets_at, midnight)
    const metrics = body.metrics as Record<string, Record<string, unknown>>
    t.same(Object.keys(metrics).sort(), ['api_calls', 'compute_hours', 'deployments', 'storage'])
    // The spec's fields, plus `reserved` (held by open reservations) on the daily metrics.
    t.strictSame(metrics.deployments, { current: 3, limit: 10, remaining: 7, unit: 'count', period: 'day', reserved: 0 })
    t.strictSame(metrics.api_calls, { current: 0, limit: 5000, remaining: 5000, unit: 'count', period: 'day', reserved: 0 })
    t.strictSame(metrics.compute_hours, { current: 1.25, limit: 10, remaining: 8.75, unit: 'hours', period: 'day', reserved: 0 })
    t.strictSame(metrics.storage, { current: 0.5, limit: 5, remaining: 4.5, unit: 'GB', period: 'none' })
  })

  await t.test('Check Specific Metric: POST /api/usage/check-limit', async (t) => {
    const { status, body } = await curl('Check Specific Metric')
    t.equal(status, 200)
    t.equal(body.allowed, true)
    t.equal(body.metric, 'deployments')
    t.equal(body.amount, 1)
    t.equal(body.current, 3)
    t.equal(body.limit, 10)
    t.equal(body.remaining, 7)
    t.equal(body.tier, 'free')
    t.equal(body.reason, null)
    t.ok('reason' in body, 'reason is present (null when allowed)')
    // check-limit changes nothing
    const after = await api('GET', '/api/usage/status')
    t.equal((after.body.metrics as Record<string, { current: number }>).deployments?.current, 3)
  })

  await t.test('check-limit when over the limit says why', async (t) => {
    for (let i = 0; i < 7; i++) t.equal((await api('POST', '/api/deploy')).status, 201)
    const { status, body } = await curl('Check Specific Metric')
    t.equal(status, 200)
    t.equal(body.allowed, false)
    t.equal(body.current, 10)
    t.equal(body.limit, 10)
    t.equal(body.remaining, 0)
    t.equal(body.reason, 'Daily deployments limit exceeded')
  })

  await t.test('Manual Reset (Admin Only): no body, zeroes today in Redis and Postgres', async (t) => {
    // Let a flush write today's row first, so the reset has a row to zero.
    await sleep(FLUSH_MS * 3)
    const before = await db.pool.query('SELECT deployments_created, compute_hours::text AS ch FROM daily_usage WHERE user_id = $1 AND date = CURRENT_DATE', [userId])
    t.equal(before.rows[0]?.deployments_created, 10, 'flushed before the reset')

    const { status, body } = await curl('Manual Reset (Admin Only)')
    t.equal(status, 200)
    t.equal(body.date, today)
    t.equal(body.user_id, null)
    t.same(body.metrics, ['deployments', 'api_calls', 'compute_hours'])
    t.ok((body.users_reset as number) >= 1)

    const after = await api('GET', '/api/usage/status')
    const metrics = after.body.metrics as Record<string, { current: number; remaining: number | null }>
    t.equal(metrics.deployments?.current, 0)
    t.equal(metrics.deployments?.remaining, 10)
    t.equal(metrics.api_calls?.current, 0)
    t.equal(metrics.compute_hours?.current, 0)
    t.equal(metrics.storage?.current, 0.5, 'the storage gauge is not a daily counter')

    await sleep(FLUSH_MS * 3)
    // The spec's own query (Database Queries > Check User's Usage).
    const { rows } = await db.pool.query('SELECT * FROM daily_usage WHERE user_id = $1 AND date = CURRENT_DATE', [userId])
    t.equal(rows.length, 1)
    t.equal(rows[0]?.deployments_created, 0)
    t.equal(rows[0]?.api_calls, 0)
    t.equal(Number(rows[0]?.compute_hours), 0)
    t.equal(Number(rows[0]?.storage_gb), 0.5)

    // And the user can deploy again.
    t.equal((await api('POST', '/api/deploy')).status, 201)
  })

  await t.test('the user token cannot run the admin reset', async (t) => {
    const written = commands.get('Manual Reset (Admin Only)') ?? ''
    const command = written.replaceAll('<admin-token>', userToken).replaceAll('localhost:8000', `localhost:${svc.port}`)
    const { stdout } = await run('bash', ['-c', command], { env: { PATH: process.env.PATH, HOME: home } })
    const cut = stdout.lastIndexOf('\n')
    t.equal(stdout.slice(cut + 1), '403')
    t.equal((JSON.parse(stdout.slice(0, cut)) as { detail: { error: string } }).detail.error, 'Forbidden')
  })
})

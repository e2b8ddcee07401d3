/**
 * Embedded mode (DESIGN.md 1.10, issue 12) as users run it: a real process started with none of
 * REDIS_URL, REDIS_CLUSTER_NODES, DATABASE_URL, in a folder of its own, so the data lands in its
 * default ./data. Counts survive SIGTERM and SIGKILL (never a fresh day), `npm run sql` reads the
 * embedded database while the service is stopped and is refused while it runs, a second process
 * on the folder is refused, half a Redis deployment is refused — and neither the machine's Redis
 * nor its Postgres is touched.
 */
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { Redis } from 'ioredis'
import t from 'tap'
import { BASE_URL } from '../helpers/database.ts'
import { cleanEnv, freePort, withoutTapHooks } from '../helpers/net.ts'
import { TEST_REDIS_URL, closeRedis } from '../helpers/redis.ts'
import { REPO_ROOT, startService } from '../helpers/service-process.ts'
import type { ServiceProcess } from '../helpers/service-process.ts'
import { SPEC_SQL } from '../helpers/spec-sql.ts'
import { signToken } from '../helpers/tokens.ts'

const START_MS = 120_000
/** None of the variables that choose a server mode. */
const NO_SERVERS = { REDIS_URL: undefined, REDIS_CLUSTER_NODES: undefined, DATABASE_URL: undefined, QUOTA_DATA_DIR: undefined }

async function redisKeys(): Promise<number> {
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 2 })
  redis.on('error', () => {})
  try {
    let count = 0
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', 'quota:*', 'COUNT', 1000)
      cursor = next
      count += keys.length
    } while (cursor !== '0')
    return count
  } finally {
    await closeRedis(redis)
  }
}

async function databases(): Promise<string[]> {
  const client = new pg.Client({ connectionString: BASE_URL })
  client.on('error', () => {})
  await client.connect()
  try {
    // Other test files (tap runs two at a time) create and drop quota_test_* databases meanwhile.
    const { rows } = await client.query<{ datname: string }>("SELECT datname FROM pg_database WHERE datname NOT LIKE 'quota\\_test\\_%' ORDER BY datname")
    return rows.map((r) => r.datname)
  } finally {
    await client.end()
  }
}

/** `npm run sql -- <query>` (its command: scripts/sql.ts) in `cwd`. */
function sql(cwd: string, query: string, env: Record<string, string | undefined> = {}): Promise<{ code: number | null; out: string }> {
  const [command, argv] = withoutTapHooks(process.execPath, ['--import', import.meta.resolve('tsx'), join(REPO_ROOT, 'scripts/sql.ts'), query])
  const child = spawn(command, argv, { cwd, env: cleanEnv({ ...NO_SERVERS, ...env }), stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (b: Buffer) => (out += b.toString()))
  child.stderr.on('data', (b: Buffer) => (out += b.toString()))
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, out })))
}

/** psql against the embedded database the service serves on `port`. */
function psql(port: number, query: string): Promise<{ code: number | null; out: string }> {
  const child = spawn('psql', ['-X', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', 'postgres', '-c', query], {
    env: cleanEnv({ PGPASSWORD: undefined, PGDATABASE: undefined }), stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (b: Buffer) => (out += b.toString()))
  child.stderr.on('data', (b: Buffer) => (out += b.toString()))
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, out })))
}

async function deploy(svc: ServiceProcess, token: string): Promise<number> {
  const res = await fetch(`${svc.baseUrl}/api/deploy`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
  await res.arrayBuffer()
  return res.status
}

async function deploys(svc: ServiceProcess, token: string, n: number): Promise<number[]> {
  const statuses: number[] = []
  for (let i = 0; i < n; i++) statuses.push(await deploy(svc, token))
  return statuses
}

t.test('embedded mode: no servers, counts kept across SIGTERM and SIGKILL, one process per folder', async (t) => {
  const keysBefore = await redisKeys()
  const databasesBefore = await databases()
  const cwd = t.testdir()
  const env = { ...NO_SERVERS, FLUSH_INTERVAL_MS: '200', LOG_LEVEL: 'info' }

  const first = await startService(t, env, { cwd, readyTimeoutMs: START_MS })
  const ready = await (await fetch(`${first.baseUrl}/ready`)).json()
  t.same(ready, { status: 'ready', mode: 'embedded', checks: { memory: 'ok', postgres: 'ok' } }, '/ready names the mode')
  const firstLine = first.output().split('\n')[0] ?? ''
  t.match(firstLine, /"mode":"embedded"/, 'the first log line names the mode')
  t.ok(existsSync(join(cwd, 'data', 'quota.pid')), 'the default data folder ./data holds the lock')

  const secret = first.env.JWT_SECRET as string
  const alice = signToken({ sub: randomUUID(), secret })
  t.same(await deploys(first, alice, 10), Array(10).fill(201), '10 deploys admitted')
  t.equal(await deploy(first, alice), 429, 'the 11th is denied')

  const refusedSql = await sql(cwd, 'SELECT 1')
  t.equal(refusedSql.code, 1, 'npm run sql is refused while the service holds the folder')
  t.match(refusedSql.out, new RegExp(`the service \\(process ${first.pid}\\) is running`))

  const second = await startService(t, { ...env, JWT_SECRET: secret }, { cwd, noWait: true })
  t.same(await second.waitForExit(60_000), { code: 1, signal: null }, 'a second process on the folder is refused')
  t.match(second.output(), new RegExp(`data folder .* is in use by process ${first.pid}`))

  first.signal('SIGTERM')
  t.same(await first.waitForExit(15_000), { code: 0, signal: null }, 'SIGTERM: exit 0')
  t.notOk(existsSync(join(cwd, 'data', 'quota.pid')), 'the lock is released')

  const aliceId = JSON.parse(Buffer.from(alice.split('.')[1] as string, 'base64url').toString()).sub as string
  const rows = await sql(cwd, `SELECT deployments_created FROM daily_usage WHERE user_id = '${aliceId}' AND date = CURRENT_DATE`)
  t.equal(rows.code, 0, rows.out)
  t.match(rows.out, /deployments_created\n-+\n 10\n\(1 row\)/, 'daily_usage holds the 10 (npm run sql, service stopped)')

  const restarted = await startService(t, { ...env, JWT_SECRET: secret }, { cwd, readyTimeoutMs: START_MS })
  t.equal(await deploy(restarted, alice), 429, 'after the restart the 11th deploy is still denied')

  // SIGKILL: nothing runs at exit; what the flusher wrote before is all the next start knows.
  const bob = signToken({ sub: randomUUID(), secret })
  t.same(await deploys(restarted, bob, 7), Array(7).fill(201))
  await sleep(1000) // a few flush intervals: the 7 are in daily_usage
  // Carol's 5 come right before the kill: some may not be flushed yet (the lost interval).
  const carol = signToken({ sub: randomUUID(), secret })
  t.same(await deploys(restarted, carol, 5), Array(5).fill(201))
  restarted.signal('SIGKILL')
  await restarted.waitForExit(15_000)
  t.ok(existsSync(join(cwd, 'data', 'quota.pid')), 'SIGKILL leaves the lock file behind')
  const afterKill = await startService(t, { ...env, JWT_SECRET: secret }, { cwd, readyTimeoutMs: START_MS })
  t.pass('the stale lock of the killed process is taken over')
  const statuses = await deploys(afterKill, bob, 4)
  t.same(statuses, [201, 201, 201, 429], 'the killed process\'s 7 still count: 3 more, then denied (no fresh day)')
  t.equal(await deploy(afterKill, alice), 429, 'and alice is still denied')
  const status = await fetch(`${afterKill.baseUrl}/api/usage/status`, { headers: { authorization: `Bearer ${carol}` } })
  const known = ((await status.json()) as { metrics: { deployments: { current: number } } }).metrics.deployments.current
  t.ok(known <= 5, `carol restarts from what was flushed: ${known} of her 5`)
  const more = (await deploys(afterKill, carol, 11)).filter((code) => code === 201).length
  t.equal(more, 10 - known, `then exactly ${10 - known} more: at most the ${5 - known} lost with the unflushed interval over the limit, never a fresh day`)
  afterKill.signal('SIGTERM')
  t.same(await afterKill.waitForExit(15_000), { code: 0, signal: null })

  t.equal(await redisKeys(), keysBefore, "no key under the machine's Redis default prefix was created")
  t.same(await databases(), databasesBefore, "no database was created on the machine's Postgres")
})

t.test('half a Redis deployment and cluster mode are refused with one line', async (t) => {
  const cwd = t.testdir()
  const missingDb = await startService(t, { ...NO_SERVERS, REDIS_URL: TEST_REDIS_URL }, { cwd, noWait: true })
  t.same(await missingDb.waitForExit(30_000), { code: 1, signal: null })
  t.match(missingDb.output(), /^quota: configuration error: DATABASE_URL: is required with REDIS_URL/m)

  const missingRedis = await startService(t, { ...NO_SERVERS, DATABASE_URL: `${BASE_URL}x` }, { cwd, noWait: true })
  t.same(await missingRedis.waitForExit(30_000), { code: 1, signal: null })
  t.match(missingRedis.output(), /^quota: configuration error: REDIS_URL: is required with DATABASE_URL/m)

  const cluster = await startService(t, { ...NO_SERVERS, REDIS_CLUSTER_NODES: '127.0.0.1:7000', DATABASE_URL: BASE_URL }, { cwd, noWait: true })
  t.same(await cluster.waitForExit(30_000), { code: 1, signal: null })
  t.match(cluster.output(), /cannot reach Redis at 127\.0\.0\.1:7000/, 'cluster mode with nothing on its seed node: a clear line')
  t.notOk(existsSync(join(cwd, 'data')), 'no data folder was created by a refused start')
})

// The spec's monitoring queries, verbatim (test/db/spec-queries.test.ts checks their answers).
t.test('EMBEDDED_PG_PORT: psql runs the spec\'s queries; a tier changed in plain SQL applies within 1 s', async (t) => {
  const cwd = t.testdir()
  const pgPort = await freePort()
  const env = { ...NO_SERVERS, FLUSH_INTERVAL_MS: '200', EMBEDDED_PG_PORT: String(pgPort) }
  const svc = await startService(t, env, { cwd, readyTimeoutMs: START_MS })
  const id = randomUUID()
  const token = signToken({ sub: id, secret: svc.env.JWT_SECRET as string, username: 'carol' })
  t.same(await deploys(svc, token, 10), Array(10).fill(201))
  t.equal(await deploy(svc, token), 429)
  await sleep(600) // flushed

  // The spec's seven statements, verbatim, through psql (the update comes last, below).
  const run = async (name: keyof typeof SPEC_SQL): Promise<string> => {
    const result = await psql(pgPort, SPEC_SQL[name].replaceAll('<uuid>', id))
    t.equal(result.code, 0, `${name}: ${result.out}`)
    return result.out
  }
  t.match(await run('CHECK_USAGE'), new RegExp(`${id}\\s+\\|[^\\n]*\\|\\s+10\\s+\\|`), "check user's usage: today's row, 10 deployments")
  t.match(await run('CHECK_TIER'), /carol\s+\|\s+free/, "check user's tier: carol, free")
  t.match(await run('VIEW_LIMITS'), /free\s+\|\s+10\s+\|\s+5000/, 'view tier limits')
  t.match(await run('TOP_USERS'), /carol\s+\|\s+10\s+\|\s+0/, 'top users: carol with 10 deployments')
  t.match(await run('NEAR_LIMITS'), /carol\s+\| free\s+\|\s+10\s+\|\s+10/, 'near limits: carol at 10 of 10')
  t.match(await run('HISTORY'), /\d{4}-\d\d-\d\d\s+\|\s+1\s+\|\s+10\s+\|\s+0/, 'history: today, 1 active user, 10 deployments')

  const viaSql = await sql(cwd, `SELECT tier FROM users WHERE id = '${id}'`, { EMBEDDED_PG_PORT: String(pgPort) })
  t.equal(viaSql.code, 0, viaSql.out)
  t.match(viaSql.out, /free/, 'npm run sql reaches the running service over EMBEDDED_PG_PORT')

  await run('UPDATE_TIER')
  const changedAt = Date.now()
  let status = 429
  while (status === 429 && Date.now() - changedAt < 1000) {
    status = await deploy(svc, token)
    if (status === 429) await sleep(50)
  }
  t.equal(status, 201, `the pro tier applies within 1 s (${Date.now() - changedAt} ms)`)

  svc.signal('SIGTERM')
  t.same(await svc.waitForExit(15_000), { code: 0, signal: null })
})

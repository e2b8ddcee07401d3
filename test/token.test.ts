/**
 * `npm run token` (scripts/token.ts): prints only a token, signed so the service accepts it —
 * with JWT_SECRET, or with the same dev secret file the service reads when JWT_SECRET is unset.
 */
import { execFile } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { createVerifier } from 'fast-jwt'
import { DEV_SECRET_FILE, loadConfig } from '../src/config.ts'
import { buildTestApp } from './helpers/app.ts'

const SCRIPT = fileURLToPath(new URL('../scripts/token.ts', import.meta.url))
// Absolute, so the script also runs from a directory without node_modules (the dev-secret case).
const TSX = import.meta.resolve('tsx')

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

function run(args: string[], env: Record<string, string | undefined>, cwd?: string): Promise<Run> {
  const childEnv: Record<string, string | undefined> = {
    ...process.env, JWT_SECRET: undefined, JWT_PUBLIC_KEY: undefined, JWT_ISSUER: undefined, JWT_AUDIENCE: undefined,
    JWT_MAX_LIFETIME_S: undefined, ...env,
  }
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', TSX, SCRIPT, ...args], { env: childEnv as NodeJS.ProcessEnv, cwd }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr })
    })
  })
}

const secret = randomBytes(32).toString('base64url')

t.test('prints one token that verifies with JWT_SECRET, carrying sub, role, username and ttl', async (t) => {
  const sub = randomUUID()
  const out = await run(['--sub', sub, '--role', 'admin', '--username', 'ops', '--ttl', '15m'], { JWT_SECRET: secret })
  t.equal(out.code, 0, out.stderr)
  t.match(out.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/, 'stdout is the token and a newline, nothing else')
  const claims = createVerifier({ key: secret, algorithms: ['HS256'] })(out.stdout.trim()) as Record<string, unknown>
  t.match(claims, { sub, role: 'admin', username: 'ops' })
  t.equal(Number(claims.exp) - Number(claims.iat), 900)
  t.throws(() => createVerifier({ key: 'y'.repeat(32) })(out.stdout.trim()), 'another secret refuses it')

  // The service accepts it: through its own verifier (algorithms, required exp) and provisioning.
  const { app } = await buildTestApp(t, {
    env: { JWT_SECRET: secret },
    routes: (app) => {
      app.get('/test/me', { preHandler: app.requireAdmin }, async (request) => request.user)
    },
  })
  const res = await app.inject({ url: '/test/me', headers: { authorization: `Bearer ${out.stdout.trim()}` } })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { id: sub, username: 'ops', admin: true })
})

t.test('with JWT_ISSUER and JWT_AUDIENCE set it carries iss, aud and iat, and the service accepts it', async (t) => {
  const sub = randomUUID()
  const env = { JWT_SECRET: secret, JWT_ISSUER: 'https://issuer.example', JWT_AUDIENCE: 'quota-api, quota-admin' }
  const out = await run(['--sub', sub], env)
  t.equal(out.code, 0, out.stderr)
  const claims = createVerifier({ key: secret, algorithms: ['HS256'] })(out.stdout.trim()) as Record<string, unknown>
  t.match(claims, { sub, iss: 'https://issuer.example', aud: ['quota-api', 'quota-admin'] })
  t.type(claims.iat, 'number')
  const { app } = await buildTestApp(t, {
    env,
    routes: (app) => {
      app.get('/test/me', { preHandler: app.requireUser }, async (request) => request.user)
    },
  })
  const res = await app.inject({ url: '/test/me', headers: { authorization: `Bearer ${out.stdout.trim()}` } })
  t.equal(res.statusCode, 200, res.body)

  const single = await run(['--sub', sub], { ...env, JWT_AUDIENCE: 'quota-api' })
  t.match(createVerifier({ key: secret })(single.stdout.trim()), { aud: 'quota-api' }, 'one audience: a string')
})

t.test('a --ttl beyond JWT_MAX_LIFETIME_S (default 30 days) is refused', async (t) => {
  const [tooLong, custom, ok] = await Promise.all([
    run(['--ttl', '31d'], { JWT_SECRET: secret }),
    run(['--ttl', '2h'], { JWT_SECRET: secret, JWT_MAX_LIFETIME_S: '3600' }),
    run(['--ttl', '30d'], { JWT_SECRET: secret }),
  ])
  t.equal(tooLong.code, 1)
  t.equal(tooLong.stdout, '')
  t.match(tooLong.stderr, /--ttl 31d is longer than JWT_MAX_LIFETIME_S \(2592000 s\)/)
  t.equal(custom.code, 1)
  t.match(custom.stderr, /JWT_MAX_LIFETIME_S \(3600 s\)/)
  t.equal(ok.code, 0, ok.stderr)
})

t.test('without JWT_SECRET it signs with the dev secret file the service reads', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'quota-token-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const out = await run(['--sub', randomUUID()], {}, dir)
  t.equal(out.code, 0, out.stderr)
  t.match(out.stderr, /dev secret/)
  const fileSecret = readFileSync(join(dir, DEV_SECRET_FILE), 'utf8').trim()
  t.equal(loadConfig({}, { cwd: dir }).jwt.secret, fileSecret, 'the service would use the same secret')
  const claims = createVerifier({ key: fileSecret })(out.stdout.trim()) as Record<string, unknown>
  t.equal(Number(claims.exp) - Number(claims.iat), 3600, 'default ttl 1h')
})

t.test('no --sub: a random UUID, announced on stderr', async (t) => {
  const out = await run([], { JWT_SECRET: secret })
  t.equal(out.code, 0)
  const claims = createVerifier({ key: secret })(out.stdout.trim()) as { sub: string }
  t.match(claims.sub, /^[0-9a-f-]{36}$/)
  t.match(out.stderr, claims.sub)
})

t.test('bad arguments exit 1 with a sentence on stderr and nothing on stdout', async (t) => {
  const cases = [
    [['--sub', 'alice'], /--sub must be a UUID/],
    [['--ttl', '5x'], /--ttl must look like/],
    [['--ttl', '0s'], /--ttl must be greater than 0/],
    [['--role', 'root'], /--role accepts only "admin"/],
    [['--bogus'], /Unknown option/],
  ] as const
  // Concurrently: each run starts node + tsx (~1 s).
  const outs = await Promise.all(cases.map(([args]) => run([...args], { JWT_SECRET: secret })))
  cases.forEach(([args, message], i) => {
    const out = outs[i]!
    t.equal(out.code, 1, args.join(' '))
    t.equal(out.stdout, '')
    t.match(out.stderr, message)
  })
  const short = await run(['--sub', randomUUID()], { JWT_SECRET: 'short' })
  t.equal(short.code, 1)
  t.match(short.stderr, /JWT_SECRET must be at least 32 bytes/)
})

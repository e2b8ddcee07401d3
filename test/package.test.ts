/**
 * The package as another app gets it: `npm pack`, the tarball installed into a temporary folder
 * outside the repository, and imported from a plain `.mjs` file (no TypeScript loader anywhere),
 * then type-checked from a consumer's `.ts` file.
 *
 * The tarball is extracted into <tmp>/app/node_modules/quota and its dependencies are symlinks to
 * the repository's node_modules (Node resolves a symlinked package's own imports from its real
 * path), so nothing is fetched. The build is reused when fresh (`scripts/build.mjs --if-stale`).
 */
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync, readdirSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import t from 'tap'
import { emptyDatabase } from './helpers/database.ts'
import { cleanEnv, withoutTapHooks } from './helpers/net.ts'
import { createTestRedis, TEST_REDIS_URL } from './helpers/redis.ts'
import { REPO_ROOT } from './helpers/service-process.ts'

interface PackedPackage {
  name: string
  dependencies: Record<string, string>
  exports: Record<string, { types: string; default: string } | string>
}

/** Runs `file args` without tap's hooks; resolves with stdout, rejects with both streams. */
function run(file: string, args: string[], cwd: string, env: Record<string, string> = {}): Promise<string> {
  const [command, argv] = withoutTapHooks(file, args)
  return new Promise((resolve, reject) => {
    execFile(command, argv, { cwd, env: cleanEnv(env), timeout: 150_000, maxBuffer: 32 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${err.message}\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`))
      else resolve(stdout)
    })
  })
}

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)],
  )
}

const tmp = await mkdtemp(join(tmpdir(), 'quota-package-'))
t.teardown(() => rm(tmp, { recursive: true, force: true }))
const app = join(tmp, 'app')
const installed = join(app, 'node_modules', 'quota')

// A fresh dist/ (strict: type errors fail), then the tarball. prepack would check again; already fresh.
await run(process.execPath, ['scripts/build.mjs', '--if-stale'], REPO_ROOT)
const packOut = await run('npm', ['pack', '--json', '--silent', '--pack-destination', tmp], REPO_ROOT)
const [packed] = JSON.parse(packOut.slice(packOut.indexOf('['))) as [{ filename: string; files: { path: string }[] }]
const tarball = join(tmp, packed.filename)
const packedFiles = new Set(packed.files.map((f) => f.path))

await mkdir(installed, { recursive: true })
await run('tar', ['-xzf', tarball, '-C', installed, '--strip-components=1'], tmp)
const pkg = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as PackedPackage
for (const dep of [...Object.keys(pkg.dependencies), '@types/node']) {
  const link = join(app, 'node_modules', dep)
  await mkdir(dirname(link), { recursive: true })
  await symlink(join(REPO_ROOT, 'node_modules', dep), link, 'dir')
}
await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }))

t.test('the tarball holds the built package, its assets and migrations, and no tests', async (t) => {
  for (const file of ['package.json', 'dist/index.js', 'dist/index.d.ts', 'dist/index.js.map', 'dist/server.js', 'drizzle/meta/_journal.json']) {
    t.ok(packedFiles.has(file), file)
  }
  // Every non-TypeScript file under src/ (the Lua scripts, wherever the refactor puts them), at the same place under dist/.
  const assets = walk(join(REPO_ROOT, 'src'))
    .map((f) => relative(join(REPO_ROOT, 'src'), f))
    .filter((f) => !/\.[cm]?tsx?$/.test(f))
  t.ok(assets.some((f) => f.endsWith('.lua')), `src/ has Lua scripts (${assets.length} assets)`)
  t.same(assets.filter((f) => !packedFiles.has(`dist/${f}`)), [], 'every src/ asset is in dist/ at the same relative path')
  const migrations = readdirSync(join(REPO_ROOT, 'drizzle')).filter((f) => f.endsWith('.sql'))
  t.same(migrations.filter((f) => !packedFiles.has(`drizzle/${f}`)), [], `all ${migrations.length} migrations`)
  t.same([...packedFiles].filter((f) => f.startsWith('test/') || f.startsWith('node_modules/')), [], 'no tests, no node_modules')
  t.same(pkg.exports['.'], { types: './dist/index.d.ts', default: './dist/index.js' }, 'exports point at dist/')
})

t.test('a plain .mjs app imports it, migrates with its drizzle/ and guards a route with the plugin', async (t) => {
  const db = await emptyDatabase(t)
  const redis = createTestRedis(t)
  await writeFile(
    join(app, 'consumer.mjs'),
    `import Fastify from 'fastify'
import quota, * as lib from 'quota'

const exportsSeen = Object.fromEntries(['default', 'quota', 'buildApp', 'createRedisClient', 'loadConfig', 'UsageService'].map((k) => [k, typeof lib[k]]))
// The packaged server finds the packaged migrations (dist/db/migrate.js -> ../../drizzle).
const { migrate } = await import(new URL('./node_modules/quota/dist/db/migrate.js', import.meta.url))
const applied = await migrate(process.env.DATABASE_URL)

const app = Fastify()
// A generous Redis timeout: this checks the package, not latency on a busy test machine.
const redis = lib.createRedisClient({ url: process.env.REDIS_URL, commandTimeoutMs: 3000 })
const userId = process.env.USER_ID
await app.register(quota, {
  redis, database: process.env.DATABASE_URL, prefix: process.env.REDIS_KEY_PREFIX, commandTimeoutMs: 3000,
  userId: () => userId, scheduler: false, checkRedisSettings: false,
})
app.post('/deploy', { preHandler: app.requireUsageLimit('deployments', 1) }, async () => ({ ok: true }))
const statuses = []
const unexpected = []
for (let i = 0; i < 11; i++) {
  const res = await app.inject({ method: 'POST', url: '/deploy' })
  statuses.push(res.statusCode)
  if (res.statusCode !== 200 && res.statusCode !== 429) unexpected.push(res.body)
}
const status = await app.usage.status(userId)
await app.close()
await redis.quit()
console.log(JSON.stringify({ exportsSeen, applied, statuses, unexpected, deployments: status.metrics.deployments }))
`,
  )
  const userId = randomUUID()
  const out = await run(process.execPath, ['consumer.mjs'], app, {
    DATABASE_URL: db.url,
    REDIS_URL: TEST_REDIS_URL,
    REDIS_KEY_PREFIX: redis.prefix,
    USER_ID: userId,
  })
  const result = JSON.parse(out.trim().split('\n').at(-1) ?? '') as {
    exportsSeen: Record<string, string>
    applied: string[]
    statuses: number[]
    unexpected: string[]
    deployments: { current: number; limit: number }
  }
  t.same(
    result.exportsSeen,
    { default: 'function', quota: 'function', buildApp: 'function', createRedisClient: 'function', loadConfig: 'function', UsageService: 'function' },
    'default export (the plugin) and named exports',
  )
  t.ok(result.applied.length > 0, `migrations applied from the package: ${result.applied.join(', ')}`)
  t.same(result.statuses, [...Array<number>(10).fill(200), 429], 'free tier: 10 deployments, then 429', { unexpected: result.unexpected })
  t.match(result.deployments, { current: 10, limit: 10 }, 'status agrees')
})

t.test('types: .d.ts beside every module, and a strict consumer type-checks against them', async (t) => {
  const types = pkg.exports['.']
  t.ok(typeof types === 'object' && existsSync(join(installed, types.types)), 'exports["."].types exists')
  const dist = join(installed, 'dist')
  // Compiled modules only: a .js under src/ (the dashboard's browser script) is an asset, copied.
  const missing = walk(dist)
    .filter((f) => f.endsWith('.js'))
    .filter((f) => existsSync(join(installed, 'src', relative(dist, f).replace(/\.js$/, '.ts'))))
    .filter((f) => !existsSync(f.replace(/\.js$/, '.d.ts')))
  t.same(missing.map((f) => relative(installed, f)), [], 'a .d.ts for every compiled module')

  await writeFile(
    join(app, 'consumer.ts'),
    `import Fastify from 'fastify'
import quota, { buildApp, createRedisClient, type ConsumeResult, type QuotaPluginOptions } from 'quota'

const options: QuotaPluginOptions = { redis: createRedisClient({ url: 'redis://127.0.0.1:6379', commandTimeoutMs: 250 }), database: 'postgres://x' }
const app = Fastify()
await app.register(quota, options)
app.post('/deploy', { preHandler: app.requireUsageLimit('deployments', 1) }, async () => ({ ok: true }))
const result: ConsumeResult = await app.usage.consume('user', { deployments: 1 })
// @ts-expect-error the types are real, not any: buildApp is a function, not a number
const notANumber: number = buildApp
export { result, notANumber }
`,
  )
  // skipLibCheck: a consumer without @types/pg would otherwise see TS7016 inside quota's .d.ts
  // (pg's types are not a dependency of the package); it also keeps this check fast.
  await writeFile(
    join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, types: ['node'] },
      files: ['consumer.ts'],
    }),
  )
  const tsc = join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  await t.resolves(run(process.execPath, [tsc, '-p', app], app), 'tsc --strict on the consumer passes')
})

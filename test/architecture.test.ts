/**
 * The architecture rules of .dependency-cruiser.mjs (run on src/ by `npm run lint`) work: the
 * command of `npm run lint:deps`, pointed at the fixture trees of test/fixtures/architecture/
 * instead of src/, passes a clean layered tree and fails, naming the right rule, on every
 * deliberate layer violation and on an import cycle.
 *
 * The fixtures mirror src/'s layer folders (test/fixtures/architecture/<case>/src/...); the rule
 * set accepts that prefix as well as src/ (see the top of .dependency-cruiser.mjs), so it is run
 * as is, from the repository root, like lint runs it. The fixtures are valid TypeScript, seen by
 * tsc and eslint like any test file; tap does not run them (no `.test.` in their names).
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import { withoutTapHooks } from './helpers/net.ts'

const ROOT = join(import.meta.dirname, '..')
const FIXTURES = 'test/fixtures/architecture'
const DEPCRUISE = join(ROOT, 'node_modules/dependency-cruiser/bin/dependency-cruise.mjs')

interface Cruise {
  /** depcruise's exit code: the number of error-level violations. */
  status: number | null
  output: string
  /** Every violation reported, as `rule: from → to`, paths relative to the case's folder. */
  violations: string[]
  /** The counts of depcruise's summary line. */
  modules: number
  dependencies: number
}

/** The `npm run lint:deps` command line, with the fixture case's src/ in place of src/. */
function lintDepsArgs(caseName: string): string[] {
  const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  const script = manifest.scripts['lint:deps'] ?? ''
  const [command, target, ...options] = script.split(/\s+/)
  if (command !== 'depcruise' || target !== 'src') throw new Error(`lint:deps is not "depcruise src ...": ${script}`)
  return [`${FIXTURES}/${caseName}/src`, ...options]
}

/**
 * Runs the lint:deps command on a fixture case, from the repository root. Without tap's
 * child-process hooks: coverage of depcruise itself is not wanted, and it makes each run slower.
 */
async function cruise(caseName: string): Promise<Cruise> {
  const [command, argv] = withoutTapHooks(process.execPath, [DEPCRUISE, ...lintDepsArgs(caseName)])
  const child = spawn(command, argv, { cwd: ROOT, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' } })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
  const [status] = (await once(child, 'close')) as [number | null]

  // Packages as `node_modules/<package>/...`, whichever folder node_modules resolves to (a
  // checkout whose node_modules is a symlink reports it as a relative path outside the repo).
  const local = (path: string): string => path.replace(`${FIXTURES}/${caseName}/`, '').replace(/^(?:\.\.\/)+[^ ]*?node_modules\//, 'node_modules/')
  // `  error <rule>: <from> → <to>`; for a cycle, <to> (the next module of the cycle) starts
  // the next line.
  const violations = [...output.matchAll(/^\s*error (\S+): (\S+) →\s+(\S+)/gm)].map(
    ([, rule, from, to]) => `${rule}: ${local(from ?? '')} → ${local(to ?? '')}`,
  )
  const counts = /(\d+) modules, (\d+) dependencies cruised/.exec(output)
  return {
    status,
    output,
    violations: violations.sort(),
    modules: Number(counts?.[1] ?? 0),
    dependencies: Number(counts?.[2] ?? 0),
  }
}

// The three cases run side by side; each test awaits its own.
const runs = { clean: cruise('clean'), layers: cruise('layers'), cycle: cruise('cycle') }
// A run that fails to start fails its own test, when awaited, not the process before that.
for (const run of Object.values(runs)) run.catch(() => {})

// What the `layers` case breaks: one import per rule (an import may break two rules), each
// file of the fixture naming the rule(s) it breaks.
const LAYER_VIOLATIONS = [
  'base-imports-other-than-base: src/metrics.ts → src/usage/types.ts',
  'counters-imports-other-than-base: src/counters/store.ts → src/db/daily-usage.ts',
  'counters-redis-imported-outside-composition-roots: src/http/health.ts → src/counters/redis/store.ts',
  'counters-redis-imported-outside-composition-roots: src/usage/admin.ts → src/counters/redis/store.ts',
  'db-imports-other-than-base: src/db/users.ts → src/usage/errors.ts',
  'engine-imports-http: src/engine.ts → src/http/routes.ts',
  'http-imports-counter-store-as-value: src/http/usage.ts → src/counters/store.ts',
  'http-imports-other-than-usage-engine-limits-db-and-base: src/http/health.ts → src/counters/redis/store.ts',
  'http-imports-other-than-usage-engine-limits-db-and-base: src/http/routes.ts → src/persistence/scheduler.ts',
  'index-imports-server-preflight-or-index: src/index.ts → src/preflight.ts',
  'ioredis-outside-counters-redis: src/counters/errors.ts → node_modules/ioredis/built/index.js',
  'limits-imports-other-than-db-and-base: src/limits/tier-limits.ts → src/usage/types.ts',
  'no-unresolvable-import: src/logger.ts → ./missing.ts',
  'persistence-imports-other-than-counters-db-and-base: src/persistence/flusher.ts → src/limits/tier-limits.ts',
  'pg-or-drizzle-outside-db: src/limits/limits-cache.ts → node_modules/pg/esm/index.mjs',
  'server-imports-index-or-server: src/server.ts → src/index.ts',
  'src-imports-test-or-scripts: src/ids.ts → test/helper.ts',
  'top-module-imported: src/engine.ts → src/preflight.ts',
  'usage-imports-other-than-counters-limits-db-and-base: src/usage/service.ts → src/persistence/scheduler.ts',
]

// The `cycle` case: store.ts imports batcher.ts, which imports a type of store.ts.
const CYCLE_VIOLATIONS = ['no-circular: src/counters/redis/batcher.ts → src/counters/redis/store.ts']

t.test('a clean layered tree, using every import the rules allow, passes', async (t) => {
  const result = await runs.clean
  t.equal(result.status, 0, result.output)
  t.same(result.violations, [], result.output)
  // Not a vacuous pass: every file of the tree was cruised, and its imports resolved.
  const files = readdirSync(join(ROOT, FIXTURES, 'clean/src'), { recursive: true }).filter((file) =>
    String(file).endsWith('.ts'),
  )
  t.ok(files.length >= 20, `${files.length} fixture files`)
  t.ok(result.modules >= files.length, `${result.modules} modules cruised, for ${files.length} files`)
  t.ok(result.dependencies >= 40, `${result.dependencies} dependencies cruised`)
})

t.test('each layer violation fails, named by its rule', async (t) => {
  const result = await runs.layers
  t.same(result.violations, [...LAYER_VIOLATIONS].sort(), result.output)
  t.equal(result.status, LAYER_VIOLATIONS.length, 'the exit code is the number of errors')
  t.match(result.output, `${LAYER_VIOLATIONS.length} errors, 0 warnings`)
})

t.test('an import cycle fails, even one closed by a type-only import', async (t) => {
  const result = await runs.cycle
  t.same(result.violations, CYCLE_VIOLATIONS, result.output)
  t.equal(result.status, 1, 'the exit code is the number of errors')
  // err-long prints each rule's comment under its violation.
  t.match(result.output, 'No import cycle anywhere in src/')
})

t.test('every rule of .dependency-cruiser.mjs is an error, has a comment and is shown to fire', async (t) => {
  const config = ((await import(pathToFileURL(join(ROOT, '.dependency-cruiser.mjs')).href)) as {
    default: { forbidden: { name: string; severity: string; comment?: string }[] }
  }).default
  const fired = new Set([...LAYER_VIOLATIONS, ...CYCLE_VIOLATIONS].map((violation) => violation.split(':')[0]))
  for (const rule of config.forbidden) {
    t.equal(rule.severity, 'error', `${rule.name} is an error`)
    t.ok((rule.comment ?? '').length > 20, `${rule.name} has a comment`)
    t.ok(fired.has(rule.name), `${rule.name} is broken by a fixture`)
  }
  t.same(
    [...fired].filter((name) => !config.forbidden.some((rule) => rule.name === name)),
    [],
    'no fixture expects a rule the config lacks',
  )
})

/**
 * `npm run bench -- --smoke`: every benchmark section for about a second, so the scripts never rot.
 * No timing is asserted (the machine is shared); only that each section ran and printed its table.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { REPO_ROOT } from './helpers/service-process.ts'
import { cleanEnv, withoutTapHooks } from './helpers/net.ts'

const run = promisify(execFile)

t.test('every bench section runs and reports', async (t) => {
  const [file, args] = withoutTapHooks(process.execPath, ['--import', 'tsx', 'scripts/bench/run.ts', '--smoke'])
  const { stdout } = await run(file, args, { cwd: REPO_ROOT, env: cleanEnv(), timeout: 170_000, maxBuffer: 16 * 2 ** 20 })
  for (const section of ['## HTTP', '## Library', '## Flusher', '## Memory', '## Midnight']) {
    t.match(stdout, section, `${section} section ran`)
  }
  for (const variant of ['| bare |', '| quota |', '| @fastify/rate-limit |', '| rate-limiter-flexible |', '| quota (over limit) |']) {
    t.match(stdout, variant, `HTTP variant ${variant}`)
  }
  t.notMatch(stdout, /\| quota \|[^\n]*[1-9]\d* non-2xx/, 'the guarded route never denied (limits far above the load)')
  t.match(stdout, /\| quota \(over limit\) \|[^\n]* 0 errors/, 'the over-limit route answered (all 429s)')
  t.match(stdout, /results: bench\/results\/smoke-/, 'results saved as JSON')
})

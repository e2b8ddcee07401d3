/**
 * `npm run bench -- --smoke`: every benchmark section, briefly, so the scripts never rot. The HTTP
 * section starts one server process per variant of its smoke list (http-variants.ts, SMOKE_VARIANTS).
 * No timing is asserted (the machine is shared); only that each section ran and printed its table.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { SMOKE_VARIANTS } from '../scripts/bench/http-variants.ts'
import { REPO_ROOT } from './helpers/service-process.ts'
import { cleanEnv, withoutTapHooks } from './helpers/net.ts'

const run = promisify(execFile)

t.test('every bench section runs and reports', async (t) => {
  const [file, args] = withoutTapHooks(process.execPath, ['--import', 'tsx', 'scripts/bench/run.ts', '--smoke'])
  const { stdout } = await run(file, args, { cwd: REPO_ROOT, env: cleanEnv(), timeout: 170_000, maxBuffer: 16 * 2 ** 20 })
  for (const section of ['## HTTP', '## Library', '## Flusher', '## Memory', '## Midnight']) {
    t.match(stdout, section, `${section} section ran`)
  }
  for (const variant of SMOKE_VARIANTS) {
    t.match(stdout, `| ${variant} |`, `HTTP variant ${variant} ran in its own server`)
  }
  t.notMatch(stdout, /\| quota \|[^\n]*[1-9]\d* non-2xx/, 'the guarded route never denied (limits far above the load)')
  // Limit 1, every user spent in the warm-up: all 500 answers are 429s from the limiter.
  t.match(stdout, /\| quota \(over limit\) \|[^\n]* 500 non-2xx, 0 errors/, 'quota over the limit: every answer a 429')
  t.match(stdout, /\| rate-limiter-flexible \(over limit\) \|[^\n]* 500 non-2xx, 0 errors/, 'a peer over the limit: every answer a 429')
  t.match(stdout, /results: bench\/results\/smoke-/, 'results saved as JSON')
})

#!/usr/bin/env node
/**
 * `npm run build`: src/ -> dist/ (JavaScript, .d.ts and source maps from tsconfig.build.json, plus
 * every non-TypeScript file under src/ — the Lua scripts, wherever they live — copied to the same
 * relative place).
 *
 *   node scripts/build.mjs             build now with tsc: type-checked, with declarations; a
 *                                      type error fails it and leaves dist/ as it was
 *   node scripts/build.mjs --if-stale  the same, only if dist/ is missing, older than an input
 *                                      (src/**, package.json, tsconfig*.json, this file) or was
 *                                      built by --for-start (npm pack runs this: prepack)
 *   node scripts/build.mjs --for-start only if dist/ is missing or older than an input, and then
 *                                      only the JavaScript and source maps, file by file with
 *                                      ts.transpileModule (no type check, no .d.ts: a second or
 *                                      two instead of tsc's many), the same JavaScript tsc emits.
 *                                      `npm start` runs this before `exec node dist/server.js`;
 *                                      types are checked by `npm run typecheck`, as with a loader.
 *
 * Plain JavaScript, so it runs without a TypeScript loader. Safe when several processes run it at
 * once (parallel `npm start`s): one builds under a lock file while the others wait and then find
 * dist/ fresh; the build goes to a temporary folder beside dist/ that replaces dist/ only when
 * complete, so nobody ever runs a half-written dist/. The stale check is a stat of each input.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { basename, dirname, join, relative, sep } from 'node:path'
import process from 'node:process'
import { setTimeout as sleep } from 'node:timers/promises'
import { URL, fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const SRC = join(ROOT, 'src')
const DIST = join(ROOT, 'dist')
/** Written last into a finished build; its mtime is the moment that build started reading its inputs. */
const STAMP = join(DIST, '.build-stamp')
const LOCK = join(ROOT, 'dist.lock')
/** Where `npm start`s wait for each other while a full build holds LOCK (they do not wait for it). */
const START_LOCK = join(ROOT, 'dist.start.lock')
/** Temporary folders are siblings of dist/ (same depth, so the source maps' ../src paths hold). */
const BUILDING_PREFIX = 'dist.building-'
const OLD_PREFIX = 'dist.old-'
/** Besides everything under src/. */
const OTHER_INPUTS = ['package.json', 'tsconfig.json', 'tsconfig.build.json', 'scripts/build.mjs'].map((f) => join(ROOT, f))
/** A lock older than this is abandoned whatever its pid says (pid reuse after a crash). */
const LOCK_MAX_AGE_MS = 10 * 60_000
/** After this long waiting for a live builder, build anyway (the final swap is safe regardless). */
const LOCK_MAX_WAIT_MS = 5 * 60_000

const log = (line) => process.stderr.write(`quota build: ${line}\n`)

function walk(dir, out = []) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) walk(path, out)
    else out.push(path)
  }
  return out
}

/** TypeScript sources are compiled; everything else under src/ (and hand-written .d.ts) is copied. */
const isCompiled = (path) => /\.[cm]?tsx?$/.test(path) && !/\.d\.[cm]?ts$/.test(path)

/** What the finished build in dist/ says about itself (its .build-stamp). */
function readStamp() {
  try {
    return JSON.parse(readFileSync(STAMP, 'utf8'))
  } catch {
    return {}
  }
}

/** Why dist/ needs a build, or undefined when it is up to date. `full`: a --for-start build is stale too. */
function staleReason(full) {
  if (!existsSync(SRC)) return existsSync(STAMP) ? undefined : 'dist/ is missing and there is no src/ to build it from'
  let builtAt
  try {
    builtAt = statSync(STAMP).mtimeMs
  } catch {
    return existsSync(DIST) ? 'dist/ has no finished build' : 'dist/ is missing'
  }
  for (const file of [...walk(SRC), ...OTHER_INPUTS]) {
    let mtime
    try {
      mtime = statSync(file).mtimeMs
    } catch {
      continue // an optional input (e.g. scripts/build.mjs outside a checkout)
    }
    if (mtime > builtAt) return `${relative(ROOT, file)} changed since the last build`
  }
  if (full && readStamp().kind !== 'full') return 'dist/ was built by `npm start` (no type check, no .d.ts)'
  return undefined
}

function pidAlive(pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return err.code === 'EPERM'
  }
}

/** The lock file holds "<pid> <kind>" of its holder. */
function tryLock(lock, kind) {
  let fd
  try {
    fd = openSync(lock, 'wx')
  } catch (err) {
    if (err.code === 'EEXIST') return false
    throw err
  }
  writeSync(fd, `${process.pid} ${kind}\n`)
  closeSync(fd)
  return true
}

/** The holder of the lock, or undefined when it was released meanwhile. */
function lockHolder(lock) {
  try {
    const [pid, kind] = readFileSync(lock, 'utf8').trim().split(' ')
    return { pid: Number.parseInt(pid ?? '', 10), kind, mtimeMs: statSync(lock).mtimeMs }
  } catch {
    return undefined
  }
}

/** The lock's holder is gone (its pid is dead, or the lock is too old to trust the pid). */
function lockAbandoned(holder) {
  if (holder === undefined) return false // released meanwhile: just try again
  if (Date.now() - holder.mtimeMs > LOCK_MAX_AGE_MS) return true
  // An empty file is a holder between its create and its write: alive.
  return Number.isInteger(holder.pid) && holder.pid > 0 && !pidAlive(holder.pid)
}

/** The lock this process holds, if any (released on exit and by cleanUp). */
let heldLock

/**
 * Takes `lock`, waiting for a live holder. Returns 'locked', 'timeout' (waited too long: build
 * anyway, the swap into dist/ is safe regardless) or 'full-build' (a start found a full build
 * holding it: it does not wait for tsc, tens of seconds on a busy machine, but takes START_LOCK).
 */
async function acquireLock(lock, kind) {
  const deadline = Date.now() + LOCK_MAX_WAIT_MS
  let told = false
  while (!tryLock(lock, kind)) {
    const holder = lockHolder(lock)
    if (kind === 'transpiled' && lock === LOCK && holder?.kind === 'full' && !lockAbandoned(holder)) return 'full-build'
    if (lockAbandoned(holder)) {
      // Move it aside rather than unlink: of two processes stealing at once only one succeeds.
      const aside = `${lock}.abandoned-${process.pid}`
      try {
        renameSync(lock, aside)
        rmSync(aside, { force: true })
      } catch {
        // someone else took it first
      }
      continue
    }
    if (Date.now() > deadline) {
      log(`gave up waiting for ${relative(ROOT, lock)} after ${LOCK_MAX_WAIT_MS / 1000} s; building anyway`)
      return 'timeout'
    }
    if (!told) log('another build is running; waiting for it')
    told = true
    await sleep(100)
  }
  heldLock = lock
  return 'locked'
}

function releaseLock() {
  if (heldLock === undefined) return
  try {
    if (Number.parseInt(readFileSync(heldLock, 'utf8'), 10) === process.pid) unlinkSync(heldLock)
  } catch {
    // not ours any more, or already gone
  }
  heldLock = undefined
}

/** Temporary folders left by builds that were killed (their pid is dead). */
function removeLeftovers() {
  for (const name of readdirSync(ROOT)) {
    const prefix = [BUILDING_PREFIX, OLD_PREFIX].find((p) => name.startsWith(p))
    if (prefix === undefined) continue
    const pid = Number.parseInt(name.slice(prefix.length), 10)
    if (prefix === OLD_PREFIX || !pidAlive(pid)) rmSync(join(ROOT, name), { recursive: true, force: true })
  }
}

const require = createRequire(import.meta.url)

function typescriptInstalled() {
  try {
    require.resolve('typescript/package.json')
    return true
  } catch {
    return false
  }
}

let child
let building

/** tsc -p tsconfig.build.json into `outDir`: true when it passed. */
function compile(outDir) {
  return new Promise((resolve, reject) => {
    // tsc prints its diagnostics on stdout; send them to stderr, where the service's own output is not.
    child = spawn(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', outDir], {
      cwd: ROOT,
      stdio: ['ignore', 2, 2],
    })
    child.once('error', reject)
    child.once('exit', (code, signal) => {
      child = undefined
      if (code !== 0) log(`tsc failed (${signal ?? `exit ${code}`})`)
      resolve(code === 0)
    })
  })
}

/**
 * Each file of tsconfig.build.json on its own through ts.transpileModule into `outDir`, with the
 * source map tsc would write. verbatimModuleSyntax makes every file transpilable alone, and the
 * output is tsc's. True unless a file has a syntax error.
 */
function transpile(outDir) {
  const ts = require('typescript')
  const format = (d) => {
    const text = ts.flattenDiagnosticMessageText(d.messageText, '\n')
    if (d.file === undefined || d.start === undefined) return text
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start)
    return `${relative(ROOT, d.file.fileName)}(${line + 1},${character + 1}): ${text}`
  }
  const config = ts.getParsedCommandLineOfConfigFile(join(ROOT, 'tsconfig.build.json'), { outDir }, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(format(d))
    },
  })
  if (config.errors.length > 0) {
    for (const d of config.errors) log(format(d))
    return false
  }
  const rootDir = config.options.rootDir ?? SRC
  let ok = true
  for (const file of config.fileNames) {
    if (!isCompiled(file)) continue
    // The package is "type": "module": .ts and .mts are ES modules, .cts CommonJS (what NodeNext decides).
    const commonjs = /\.cts$/.test(file)
    const compilerOptions = {
      ...config.options,
      module: commonjs ? ts.ModuleKind.CommonJS : ts.ModuleKind.ESNext,
      moduleResolution: commonjs ? ts.ModuleResolutionKind.Node10 : ts.ModuleResolutionKind.Bundler,
      declaration: false,
      declarationMap: false,
    }
    const result = ts.transpileModule(readFileSync(file, 'utf8'), { compilerOptions, fileName: file, reportDiagnostics: true })
    const errors = (result.diagnostics ?? []).filter((d) => d.category === ts.DiagnosticCategory.Error)
    for (const d of errors) log(format(d))
    if (errors.length > 0) ok = false
    const target = join(outDir, relative(rootDir, file).replace(/\.([cm]?)tsx?$/, '.$1js'))
    mkdirSync(dirname(target), { recursive: true })
    writeFileSync(target, result.outputText)
    if (result.sourceMapText !== undefined) {
      const map = JSON.parse(result.sourceMapText)
      map.file = basename(target)
      map.sourceRoot = ''
      map.sources = [relative(dirname(target), file).split(sep).join('/')]
      writeFileSync(`${target}.map`, JSON.stringify(map))
    }
  }
  return ok
}

/** Puts `from` in place of dist/: a rename onto an existing non-empty folder fails, so move dist/ aside first. */
function swapIntoDist(from) {
  const aside = []
  for (let attempt = 0; ; attempt++) {
    try {
      renameSync(from, DIST)
      break
    } catch (err) {
      if ((err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') || attempt > 20) throw err
    }
    const old = join(ROOT, `${OLD_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`)
    try {
      renameSync(DIST, old)
      aside.push(old)
    } catch (err) {
      if (err.code !== 'ENOENT') throw err // another builder moved it first
    }
  }
  for (const old of aside) rmSync(old, { recursive: true, force: true })
}

/** Builds (`kind`: 'full' with tsc, or 'transpiled') into a temporary folder, then swaps it in for dist/. */
async function build(kind) {
  if (!typescriptInstalled()) {
    log('TypeScript is not installed, so dist/ cannot be built here. Install with dev dependencies')
    log('(`npm ci`), or build elsewhere with `npm run build` and ship dist/ (then run `node dist/server.js`).')
    return 1
  }
  removeLeftovers()
  const startedAt = new Date() // before tsc reads a file: a source saved during the build is newer
  const out = join(ROOT, `${BUILDING_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`)
  building = out
  const ok = kind === 'full' ? await compile(out) : transpile(out)
  if (!ok) {
    rmSync(out, { recursive: true, force: true })
    building = undefined
    log('build failed; dist/ is unchanged')
    return 1
  }
  for (const file of walk(SRC)) {
    if (isCompiled(file)) continue
    const target = join(out, relative(SRC, file))
    mkdirSync(dirname(target), { recursive: true })
    copyFileSync(file, target)
  }
  const stamp = join(out, '.build-stamp')
  // Its mtime, not its content, dates the build (see staleReason).
  writeFileSync(stamp, `${JSON.stringify({ builtAt: startedAt.toISOString(), kind, builder: 'scripts/build.mjs' })}\n`)
  utimesSync(stamp, startedAt, startedAt)
  swapIntoDist(out)
  building = undefined
  log(`built dist/ (${kind}) in ${((Date.now() - startedAt.getTime()) / 1000).toFixed(1)} s`)
  return 0
}

function cleanUp() {
  child?.kill('SIGTERM')
  if (building !== undefined) rmSync(building, { recursive: true, force: true })
  releaseLock()
}

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    cleanUp()
    process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 })[signal])
  })
}

async function main() {
  const args = process.argv.slice(2)
  if (args.length > 1 || (args.length === 1 && args[0] !== '--if-stale' && args[0] !== '--for-start')) {
    log(`usage: node scripts/build.mjs [--if-stale | --for-start]`)
    return 2
  }
  const ifStale = args.length === 1
  const kind = args[0] === '--for-start' ? 'transpiled' : 'full'
  if (ifStale && staleReason(kind === 'full') === undefined) return 0 // the cheap path: no lock, a few stats

  if ((await acquireLock(LOCK, kind)) === 'full-build') {
    log('a full build is running; transpiling beside it rather than waiting for tsc')
    await acquireLock(START_LOCK, kind)
  }
  try {
    if (ifStale) {
      const reason = staleReason(kind === 'full') // again: a build that held the lock may just have made it fresh
      if (reason === undefined) return 0
      log(`${reason}: building`)
    }
    return await build(kind)
  } finally {
    releaseLock()
  }
}

let status
try {
  status = await main()
} catch (err) {
  cleanUp()
  log(`failed: ${err?.stack ?? String(err)}`)
  status = 1
}
process.exitCode = status

// The architecture of src/, checked by `npm run lint:deps` (part of `npm run lint`, so CI fails on
// a violation). Layers, top to bottom:
//
//   app.ts / server.ts / index.ts / preflight.ts   composition roots and entry points
//   http/                                          routes, know nothing of Redis
//   engine.ts                                      composition root below http
//   usage/                                         the service, the admin service
//   limits/   counters/   persistence/             (counters/redis/ is the only Redis code)
//   db/                                            pg + drizzle, one module per table
//   clock, metrics, ids, limited, logger, config, env-schema   base modules (env-schema: config's schema)
//
// Every rule is an error: `depcruise` exits with the number of errors, so one violation fails
// lint. Type-only imports count as dependencies (tsPreCompilationDeps below), for the layers and
// for cycles alike.
//
// Paths: the rules speak of `src/...`, written as `${SRC}...`. SRC also accepts the fixture trees
// of test/architecture.test.ts (test/fixtures/architecture/<case>/src/...), so that test runs
// this very rule set, unchanged, from the repository root. ROOT is the folder holding src/ (the
// repository, or a fixture case), for the rule about test/ and scripts/.
//
// Rules may overlap (http importing counters/redis/ breaks both the http rule and the
// counters/redis rule): each rule says one thing, and a bad import may break two.

const ROOT = '^(?:|test/fixtures/architecture/[^/]+/)' // not `(...)?`: depcruise refuses nested quantifiers
const SRC = `${ROOT}src/`

const BASE = `${SRC}(?:clock|metrics|ids|limited|logger|config|env-schema|telemetry)\\.ts$`
const TOP = `${SRC}(?:app|server|index|preflight)\\.ts$`
const COMPOSITION_ROOTS = `${SRC}(?:engine|app|index|preflight|server)\\.ts$`
const REDIS = `${SRC}counters/redis/`

/** What a layer may import: these parts of src/ (a folder 'db/' or a file 'engine.ts$'; dots get escaped), and the base modules. */
const inSrc = (...parts) => [...parts.map((part) => `${SRC}${part.replaceAll('.', '\\.')}`), BASE]

/** A package in node_modules (or, if it could not be resolved, its bare name). */
const npmPackage = (...names) =>
  names.flatMap((name) => [`(?:^|/)node_modules/${name}/`, `^${name}(?:/|$)`])

/** @type {import('dependency-cruiser').IConfiguration} */
export default {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment:
        'No import cycle anywhere in src/, type-only imports included: a cycle means two modules are one module in two files, and it hides which layer one of them belongs to.',
      from: { path: SRC },
      to: { circular: true },
    },
    {
      name: 'no-unresolvable-import',
      severity: 'error',
      comment:
        'Every import in src/ must resolve to a file or a package, because an import dependency-cruiser cannot resolve is invisible to every other rule here.',
      from: { path: SRC },
      to: { couldNotResolve: true },
    },
    {
      name: 'base-imports-other-than-base',
      severity: 'error',
      comment:
        'The base modules (clock, metrics, ids, limited, logger, config and its env-schema) are the bottom layer: they may import each other and packages, but no other file or folder of src/.',
      from: { path: BASE },
      to: { path: SRC, pathNot: BASE },
    },
    {
      name: 'db-imports-other-than-base',
      severity: 'error',
      comment:
        'src/db/ (Postgres access, one module per table) may import only other db modules and the base modules: errors and types it needs live in db/ or base, never in usage/, counters/ or limits/.',
      from: { path: `${SRC}db/` },
      to: { path: SRC, pathNot: inSrc('db/') },
    },
    {
      name: 'counters-imports-other-than-base',
      severity: 'error',
      comment:
        'src/counters/ (the CounterStore interface and its implementations) may import only counters/ and the base modules: never db/, limits/, usage/, persistence/, http/ or engine.ts.',
      from: { path: `${SRC}counters/` },
      to: { path: SRC, pathNot: inSrc('counters/') },
    },
    {
      name: 'limits-imports-other-than-db-and-base',
      severity: 'error',
      comment:
        'src/limits/ (tier limits and their cache) may import only limits/, db/ and the base modules.',
      from: { path: `${SRC}limits/` },
      to: { path: SRC, pathNot: inSrc('limits/', 'db/') },
    },
    {
      name: 'persistence-imports-other-than-counters-db-and-base',
      severity: 'error',
      comment:
        'src/persistence/ (flusher, scheduler, leader) may import only persistence/, counters/ (the CounterStore interface, not counters/redis/), db/ and the base modules.',
      from: { path: `${SRC}persistence/` },
      to: { path: SRC, pathNot: inSrc('persistence/', 'counters/', 'db/') },
    },
    {
      name: 'usage-imports-other-than-counters-limits-db-and-base',
      severity: 'error',
      comment:
        'src/usage/ (the usage and admin services) may import only usage/, counters/ (the CounterStore interface, not counters/redis/), limits/, db/ and the base modules: never persistence/, http/ or engine.ts.',
      from: { path: `${SRC}usage/` },
      to: { path: SRC, pathNot: inSrc('usage/', 'counters/', 'limits/', 'db/') },
    },
    {
      name: 'engine-imports-http',
      severity: 'error',
      comment:
        'src/engine.ts wires the layers below http/ together, so it may import anything in src/ except http/ (and the top modules, see top-module-imported).',
      from: { path: `${SRC}engine\\.ts$` },
      to: { path: `${SRC}http/` },
    },
    {
      name: 'http-imports-other-than-usage-engine-limits-db-and-base',
      severity: 'error',
      comment:
        'src/http/ may import only http/, usage/, engine.ts, limits/, db/, the base modules and the types of counters/store.ts: never counters/redis/ (routes know nothing of Redis or Lua), persistence/ or the top modules.',
      from: { path: `${SRC}http/` },
      to: {
        path: SRC,
        pathNot: inSrc('http/', 'usage/', 'engine.ts$', 'limits/', 'db/', 'counters/store.ts$'),
      },
    },
    {
      name: 'http-imports-counter-store-as-value',
      severity: 'error',
      comment:
        'src/http/ may import counters/store.ts with `import type` only: the CounterStore is handed to http by engine.ts, http never makes or calls into one itself.',
      from: { path: `${SRC}http/` },
      to: { path: `${SRC}counters/store\\.ts$`, dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'counters-redis-imported-outside-composition-roots',
      severity: 'error',
      comment:
        'src/counters/redis/ (the Redis CounterStore) is imported only by counters/redis/ itself and the composition roots (engine.ts, app.ts, index.ts, preflight.ts, server.ts); everything else sees the CounterStore interface of counters/store.ts.',
      from: { path: SRC, pathNot: [REDIS, COMPOSITION_ROOTS] },
      to: { path: REDIS },
    },
    {
      name: 'ioredis-outside-counters-redis',
      severity: 'error',
      comment:
        'Only src/counters/redis/ may import ioredis (types included): Redis is one implementation of the CounterStore, not a dependency of the rest of the service.',
      from: { path: SRC, pathNot: REDIS },
      to: { path: npmPackage('ioredis') },
    },
    {
      name: 'pg-or-drizzle-outside-db',
      severity: 'error',
      comment:
        'Only src/db/ may import pg or drizzle-orm (types included): every other layer reaches Postgres through the functions and types of db/.',
      from: { path: SRC, pathNot: `${SRC}db/` },
      to: { path: npmPackage('pg', 'drizzle-orm', '@types/pg') },
    },
    {
      name: 'top-module-imported',
      severity: 'error',
      comment:
        'app.ts, server.ts, index.ts and preflight.ts are the top of src/: nothing imports them, except server.ts (which imports app.ts and preflight.ts) and index.ts (which re-exports app.ts).',
      from: { path: SRC, pathNot: `${SRC}(?:server|index)\\.ts$` },
      to: { path: TOP },
    },
    {
      name: 'server-imports-index-or-server',
      severity: 'error',
      comment:
        'src/server.ts (the process entry point) may import app.ts and preflight.ts of the top modules, but not index.ts (the library entry point) or itself.',
      from: { path: `${SRC}server\\.ts$` },
      to: { path: `${SRC}(?:server|index)\\.ts$` },
    },
    {
      name: 'index-imports-server-preflight-or-index',
      severity: 'error',
      comment:
        'src/index.ts (the library entry point) may re-export app.ts of the top modules, but not server.ts or preflight.ts (process start-up) or itself.',
      from: { path: `${SRC}index\\.ts$` },
      to: { path: `${SRC}(?:server|preflight|index)\\.ts$` },
    },
    {
      name: 'src-imports-test-or-scripts',
      severity: 'error',
      comment:
        'Nothing in src/ imports from test/ or scripts/: the service must build and run without them.',
      from: { path: SRC },
      to: { path: `${ROOT}(?:test|scripts)/`, pathNot: SRC },
    },
  ],
  options: {
    // Cruise our own code; note which packages it imports, but do not cruise into them.
    doNotFollow: { path: ['node_modules'] },
    // true: count imports that vanish when TypeScript compiles (`import type`, type-only
    // re-exports) as dependencies, so a type-only import can break a layer rule or close a cycle.
    tsPreCompilationDeps: true,
    // Resolve the way tsc does: module NodeNext, `.ts` extensions in import specifiers.
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
    skipAnalysisNotInRules: true,
  },
}

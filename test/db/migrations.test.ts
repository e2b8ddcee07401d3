/**
 * Migrations (DESIGN.md 1.2, 1.6, 1.7): they build the contract's schema from nothing, run twice
 * without effect, roll back one step at a time to nothing and re-apply to the identical schema,
 * seed the tiers exactly, and make CURRENT_DATE the UTC day for every session.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import pg from 'pg'
import t from 'tap'
import { utcDay } from '../../src/clock.ts'
import { migrate, rollback, status } from '../../src/db/migrate.ts'
import { BASE_URL, createTestDatabase, emptyDatabase } from '../helpers/database.ts'
import { cleanEnv, withoutTapHooks } from '../helpers/net.ts'
import { REPO_ROOT } from '../helpers/service-process.ts'

const run = promisify(execFile)
const TAGS = ['0000_init', '0001_utc_tiers_notify', '0002_widen_daily_counts', '0003_admin_audit', '0004_idempotency_records', '0005_usage_events',
  '0006_partition_daily_usage']

/** `statusLines` when the first `applied` migrations are applied and the rest pending. */
const stateAfter = (applied: number): string[] => TAGS.map((tag, i) => `${tag}: ${i < applied ? 'applied' : 'pending'}`)

/** daily_usage's monthly partitions and the DEFAULT one: the tables 0006 adds besides the parent. */
const isPartition = (table: string): boolean => /^daily_usage_(\d{4}_\d{2}|default)$/.test(table)

/** Runs `fn` on a fresh plain connection (no session options): what an operator's psql sees. */
async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url })
  client.on('error', () => {})
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

/** Everything a migration defines, in a comparable form (ordered, no oids or timestamps). */
async function schemaDump(url: string): Promise<Record<string, unknown[]>> {
  return withClient(url, async (c) => {
    const q = async (sql: string): Promise<unknown[]> => (await c.query(sql)).rows
    return {
      columns: await q(`SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default,
                               numeric_precision, numeric_scale
                        FROM information_schema.columns WHERE table_schema = 'public'
                        ORDER BY table_name, ordinal_position`),
      constraints: await q(`SELECT conrelid::regclass::text AS tbl, conname, contype, pg_get_constraintdef(oid) AS def
                            FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2`),
      indexes: await q(`SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2`),
      triggers: await q(`SELECT tgrelid::regclass::text AS tbl, tgname, pg_get_triggerdef(oid) AS def
                         FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2`),
      functions: await q(`SELECT proname, pg_get_functiondef(oid) AS def FROM pg_proc
                          WHERE pronamespace = 'public'::regnamespace ORDER BY 1`),
      settings: await q(`SELECT unnest(setconfig) AS setting FROM pg_db_role_setting
                         WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
                         ORDER BY 1`),
      // Tier rows, when the table exists (it does not after a full rollback).
      tiers: (await c.query(`SELECT to_regclass('public.usage_limits') IS NOT NULL AS ok`)).rows[0]?.ok
        ? await q(`SELECT tier, max_deployments_per_day, max_api_calls_per_day, max_compute_hours_per_day,
                          max_storage_gb FROM usage_limits ORDER BY tier`)
        : [],
    }
  })
}

/** `status()` reduced to `tag: applied|pending`, and it must never report a modified file. */
async function statusLines(url: string): Promise<string[]> {
  const infos = await status(url)
  return infos.map((m) => `${m.tag}: ${m.applied ? 'applied' : 'pending'}${m.modified ? ' MODIFIED' : ''}`)
}

t.test('migrate, rollback and re-migrate on an empty database', async (t) => {
  const db = await emptyDatabase(t)
  let full: Record<string, unknown[]> = {}

  t.test('empty database: everything pending, no timezone setting', async (t) => {
    t.same(await statusLines(db.url), TAGS.map((tag) => `${tag}: pending`))
    const empty = await schemaDump(db.url)
    t.same(empty.columns, [], 'no tables')
    t.same(empty.settings, [], 'no database-level settings yet')
  })

  t.test('migrate applies every migration, then nothing', async (t) => {
    t.same(await migrate(db.url), TAGS, 'applies every migration in order')
    t.same(await statusLines(db.url), TAGS.map((tag) => `${tag}: applied`))
    full = await schemaDump(db.url)
    t.same(await migrate(db.url), [], 'second run applies nothing')
    t.same(await schemaDump(db.url), full, 'and changes nothing')
    const recorded = await db.pool.query('SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations')
    t.equal(recorded.rows[0].n, TAGS.length, 'each migration recorded once')
  })

  t.test('the contract tables and columns exist (DESIGN.md 1.7)', async (t) => {
    const columns = (full.columns as Array<{ table_name: string; column_name: string; data_type: string; is_nullable: string }>)
      .map((c) => `${c.table_name}.${c.column_name} ${c.data_type}${c.is_nullable === 'NO' ? ' not null' : ''}`)
    for (const expected of [
      'users.id uuid not null',
      'users.username text not null',
      'users.tier text not null',
      'users.created_at timestamp with time zone not null',
      'usage_limits.tier text not null',
      'usage_limits.max_deployments_per_day integer',
      'usage_limits.max_api_calls_per_day integer',
      'usage_limits.max_compute_hours_per_day numeric',
      'usage_limits.max_storage_gb numeric',
      'daily_usage.user_id uuid not null',
      'daily_usage.date date not null',
      'daily_usage.deployments_created bigint not null',
      'daily_usage.api_calls bigint not null',
      'daily_usage.compute_hours numeric not null',
      'daily_usage.storage_gb numeric not null',
      'daily_usage.updated_at timestamp with time zone not null',
      'daily_usage.version bigint not null',
    ]) {
      t.ok(columns.includes(expected), expected)
    }
    const constraints = (full.constraints as Array<{ tbl: string; def: string }>).map((c) => `${c.tbl}: ${c.def}`)
    for (const expected of [
      'users: PRIMARY KEY (id)',
      'users: UNIQUE (username)',
      'users: FOREIGN KEY (tier) REFERENCES usage_limits(tier) ON UPDATE CASCADE',
      'usage_limits: PRIMARY KEY (tier)',
      'daily_usage: PRIMARY KEY (user_id, date)',
      'daily_usage: FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE',
    ]) {
      t.ok(constraints.includes(expected), expected)
    }
    const triggers = (full.triggers as Array<{ tgname: string }>).map((x) => x.tgname)
    t.same(triggers.sort(), ['usage_limits_notify', 'users_tier_notify'], 'change-notification triggers')
    const userDefault = await db.pool.query(
      `SELECT column_default FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'tier'`,
    )
    t.equal(userDefault.rows[0].column_default, `'free'::text`, "users.tier defaults to 'free'")
  })

  t.test('tier rows are exactly DESIGN.md 1.6', async (t) => {
    t.same(full.tiers, [
      { tier: 'enterprise', max_deployments_per_day: null, max_api_calls_per_day: null, max_compute_hours_per_day: null, max_storage_gb: null },
      { tier: 'free', max_deployments_per_day: 10, max_api_calls_per_day: 5000, max_compute_hours_per_day: '10', max_storage_gb: '5' },
      { tier: 'pro', max_deployments_per_day: 50, max_api_calls_per_day: 50000, max_compute_hours_per_day: '100', max_storage_gb: '100' },
    ])
  })

  t.test('the database default timezone is UTC', async (t) => {
    t.same(full.settings, [{ setting: 'TimeZone=UTC' }], 'set on the database itself')
    // A brand-new session with no options, like an operator's psql.
    const before = utcDay(Date.now())
    const seen = await withClient(db.url, async (c) => {
      const tz = await c.query('SHOW timezone')
      const today = await c.query('SELECT CURRENT_DATE::text AS today')
      return { tz: tz.rows[0].TimeZone as string, today: today.rows[0].today as string }
    })
    const after = utcDay(Date.now())
    t.equal(seen.tz, 'UTC')
    // Only differs from `before` if the query ran across midnight UTC.
    t.ok(seen.today === before || seen.today === after, `CURRENT_DATE ${seen.today} is the UTC day ${after}`)
  })

  t.test('the admin_audit table exists, with its checks', async (t) => {
    const columns = (full.columns as Array<{ table_name: string; column_name: string; data_type: string; is_nullable: string }>)
      .filter((c) => c.table_name === 'admin_audit')
      .map((c) => `${c.column_name} ${c.data_type}${c.is_nullable === 'NO' ? ' not null' : ''}`)
    t.same(columns, [
      'id bigint not null', 'at timestamp with time zone not null', 'actor uuid', 'action text not null',
      'target jsonb not null', 'outcome text not null', 'detail jsonb',
    ])
    await t.rejects(db.pool.query(`INSERT INTO admin_audit (action, outcome) VALUES ('drop-everything', 'ok')`), { code: '23514' }, 'unknown action refused')
    await t.rejects(db.pool.query(`INSERT INTO admin_audit (action, outcome) VALUES ('set-tier', 'maybe')`), { code: '23514' }, 'unknown outcome refused')
  })

  t.test('the idempotency_records table exists, keyed by user and key', async (t) => {
    const columns = (full.columns as Array<{ table_name: string; column_name: string; data_type: string; is_nullable: string }>)
      .filter((c) => c.table_name === 'idempotency_records')
      .map((c) => `${c.column_name} ${c.data_type}${c.is_nullable === 'NO' ? ' not null' : ''}`)
    t.same(columns, ['user_id uuid not null', 'key text not null', 'answer text not null', 'expires_at timestamp with time zone not null'])
  })

  t.test('the usage_events table: columns, checks, the live and crossing keys, the due index', async (t) => {
    const columns = (full.columns as Array<{ table_name: string; column_name: string; data_type: string; is_nullable: string }>)
      .filter((c) => c.table_name === 'usage_events')
      .map((c) => `${c.column_name} ${c.data_type}${c.is_nullable === 'NO' ? ' not null' : ''}`)
    t.same(columns, [
      'id bigint not null', 'user_id uuid not null', 'metric text not null', 'date date not null', 'threshold smallint not null',
      'current numeric not null', 'limit numeric not null', 'created_at timestamp with time zone not null',
      'rearmed_at timestamp with time zone', 'attempts integer not null', 'next_attempt_at timestamp with time zone not null',
      'delivered_at timestamp with time zone', 'last_error text', 'gave_up_at timestamp with time zone',
    ])
    const indexes = (full.indexes as Array<{ tablename: string; indexname: string; indexdef: string }>)
      .filter((i) => i.tablename === 'usage_events')
      .map((i) => i.indexdef.replace(/^.* USING btree /, `${i.indexname} `))
    t.same(indexes.sort(), [
      'usage_events_crossing_key (user_id, metric, date, threshold, created_at)',
      'usage_events_due_idx (next_attempt_at) WHERE ((delivered_at IS NULL) AND (gave_up_at IS NULL))',
      'usage_events_live_key (date, user_id, metric, threshold) WHERE (rearmed_at IS NULL)',
      'usage_events_pkey (id)',
    ])
    const constraints = (full.constraints as Array<{ tbl: string; def: string }>).map((c) => `${c.tbl}: ${c.def}`)
    t.ok(constraints.includes('usage_events: FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE'), 'user foreign key, cascading')
    const user = '550e8400-e29b-41d4-a716-446655440000'
    await db.pool.query(`INSERT INTO users (id, username) VALUES ($1, 'events-check')`, [user])
    await t.rejects(db.pool.query(
      `INSERT INTO usage_events (user_id, metric, date, threshold, current, "limit", created_at)
       VALUES ($1, 'api_calls', '2026-11-28', 90, 9, 10, now())`, [user]), { code: '23514' }, 'threshold 90 refused')
    await db.pool.query('DELETE FROM users WHERE id = $1', [user])
  })

  t.test('daily_usage is partitioned by month: the current month and the next three, and a DEFAULT', async (t) => {
    const parent = await db.pool.query(`SELECT c.relkind, pg_get_partkeydef(c.oid) AS key FROM pg_class c WHERE c.oid = 'daily_usage'::regclass`)
    t.same(parent.rows, [{ relkind: 'p', key: 'RANGE (date)' }])
    const first = await db.pool.query<{ d: string }>(`SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date::text AS d`)
    const month = first.rows[0]?.d ?? ''
    const { rows } = await db.pool.query<{ name: string; bound: string }>(
      `SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'daily_usage'::regclass ORDER BY 1`)
    const expected = [0, 1, 2, 3].map((n) => {
      const d = new Date(`${month}T00:00:00Z`)
      d.setUTCMonth(d.getUTCMonth() + n)
      const from = d.toISOString().slice(0, 10)
      d.setUTCMonth(d.getUTCMonth() + 1)
      return { name: `daily_usage_${from.slice(0, 7).replace('-', '_')}`, bound: `FOR VALUES FROM ('${from}') TO ('${d.toISOString().slice(0, 10)}')` }
    })
    t.same(rows, [...expected, { name: 'daily_usage_default', bound: 'DEFAULT' }])
  })

  let before0001: Awaited<ReturnType<typeof schemaDump>> | undefined
  t.test('first rollback reverts 0006 only: daily_usage is one plain table again, as 0005 left it', async (t) => {
    t.equal(await rollback(db.url), '0006_partition_daily_usage')
    t.same(await statusLines(db.url), stateAfter(6))
    const dump = await schemaDump(db.url)
    const kind = await db.pool.query(`SELECT relkind FROM pg_class WHERE oid = 'daily_usage'::regclass`)
    t.same(kind.rows, [{ relkind: 'r' }], 'a plain table')
    // The parent's columns, keys and index were 0005's; only the partitions (and their copies of them) go.
    t.same(dump.columns, (full.columns as Array<{ table_name: string }>).filter((c) => !isPartition(c.table_name)))
    t.same(dump.constraints, (full.constraints as Array<{ tbl: string }>).filter((c) => !isPartition(c.tbl)))
    // A partitioned table's index reads "ON ONLY daily_usage" (each partition has its own); the same index otherwise.
    t.same(dump.indexes, (full.indexes as Array<{ tablename: string; indexdef: string }>).filter((i) => !isPartition(i.tablename))
      .map((i) => ({ ...i, indexdef: i.indexdef.replace(' ON ONLY ', ' ON ') })))
    t.same(dump.tiers, full.tiers, 'tiers untouched')
  })

  t.test('next rollback reverts 0005 only: no usage_events', async (t) => {
    t.equal(await rollback(db.url), '0005_usage_events')
    t.same(await statusLines(db.url), stateAfter(5))
    const dump = await schemaDump(db.url)
    t.notOk((dump.columns as Array<{ table_name: string }>).some((c) => c.table_name === 'usage_events'), 'table dropped')
    t.notOk((dump.indexes as Array<{ tablename: string }>).some((i) => i.tablename === 'usage_events'), 'indexes dropped')
    t.ok((dump.columns as Array<{ table_name: string }>).some((c) => c.table_name === 'idempotency_records'), 'idempotency_records kept')
  })

  t.test('next rollback reverts 0004 only: no idempotency_records', async (t) => {
    t.equal(await rollback(db.url), '0004_idempotency_records')
    t.same(await statusLines(db.url), stateAfter(4))
    const dump = await schemaDump(db.url)
    t.notOk((dump.columns as Array<{ table_name: string }>).some((c) => c.table_name === 'idempotency_records'), 'table dropped')
    t.ok((dump.columns as Array<{ table_name: string }>).some((c) => c.table_name === 'admin_audit'), 'admin_audit kept')
  })

  t.test('next rollback reverts 0003 only: no admin_audit', async (t) => {
    t.equal(await rollback(db.url), '0003_admin_audit')
    t.same(await statusLines(db.url), stateAfter(3))
    const dump = await schemaDump(db.url)
    t.notOk((dump.columns as Array<{ table_name: string }>).some((c) => c.table_name === 'admin_audit'), 'table dropped')
    t.same(dump.tiers, full.tiers, 'tiers untouched')
  })

  t.test('then 0002 only: the daily counts are int again', async (t) => {
    t.equal(await rollback(db.url), '0002_widen_daily_counts')
    t.same(await statusLines(db.url), stateAfter(2))
    const types = await db.pool.query(
      `SELECT column_name, data_type FROM information_schema.columns
        WHERE table_name = 'daily_usage' AND column_name IN ('deployments_created', 'api_calls') ORDER BY column_name`,
    )
    t.same(types.rows, [{ column_name: 'api_calls', data_type: 'integer' }, { column_name: 'deployments_created', data_type: 'integer' }])
    before0001 = await schemaDump(db.url)
    t.same(before0001.tiers, full.tiers, 'tiers untouched')
  })

  t.test('then 0001 only', async (t) => {
    t.equal(await rollback(db.url), '0001_utc_tiers_notify')
    t.same(await statusLines(db.url), stateAfter(1))
    const dump = await schemaDump(db.url)
    t.same(dump.settings, [], 'timezone setting reset')
    t.same(dump.triggers, [], 'triggers dropped')
    t.same(dump.functions, [], 'notify function dropped')
    t.same(dump.tiers, [], 'seeded tiers removed')
    t.same(dump.columns, before0001?.columns, 'tables of 0000 untouched')
  })

  t.test('npm run db:status reports the partial state', async (t) => {
    const [file, args] = withoutTapHooks('npm', ['run', '-s', 'db:status'])
    const { stdout } = await run(file, args, {
      cwd: REPO_ROOT,
      env: cleanEnv({ DATABASE_URL: db.url }),
      encoding: 'utf8',
    })
    t.same(stdout.trim().split('\n'), [
      'applied  0000_init',
      'pending  0001_utc_tiers_notify',
      'pending  0002_widen_daily_counts',
      'pending  0003_admin_audit',
      'pending  0004_idempotency_records',
      'pending  0005_usage_events',
      'pending  0006_partition_daily_usage',
      'current: 0000_init; 6 pending',
    ])
  })

  t.test('then 0000; one more has nothing to do', async (t) => {
    t.equal(await rollback(db.url), '0000_init')
    t.same(await statusLines(db.url), TAGS.map((tag) => `${tag}: pending`))
    const dump = await schemaDump(db.url)
    t.same(dump.columns, [], 'no tables left')
    t.same(dump.constraints, [])
    t.same(dump.indexes, [])
    t.equal(await rollback(db.url), null)
  })

  t.test('migrate again gives the identical schema', async (t) => {
    t.same(await migrate(db.url), TAGS)
    t.same(await statusLines(db.url), TAGS.map((tag) => `${tag}: applied`))
    t.same(await schemaDump(db.url), full)
  })
})

t.test('createTestDatabase gives a migrated database and drops it', async (t) => {
  const db = await createTestDatabase()
  t.match(db.name, /^quota_test_\d+_[0-9a-f]{8}$/)
  const tiers = await db.pool.query('SELECT count(*)::int AS n FROM usage_limits')
  t.equal(tiers.rows[0].n, 3)
  await db.drop()
  await db.drop() // twice is fine
  const left = await withClient(BASE_URL, (c) => c.query('SELECT 1 FROM pg_database WHERE datname = $1', [db.name]))
  t.equal(left.rowCount, 0, 'dropped')
})

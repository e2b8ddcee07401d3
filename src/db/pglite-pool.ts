/**
 * Embedded mode's Postgres: PGlite (Postgres compiled to WebAssembly, in this process) on a data
 * folder, behind the part of pg.Pool the service uses, so every module of db/ — raw SQL and
 * drizzle's node-postgres driver alike — runs its one copy of each query on either database.
 *
 * Values keep node-postgres' semantics exactly: parameters are turned into text by pg's own
 * prepareValue, and PGlite is told to return every column as text, which pg's type parsers (the
 * query's own `types`, else the global ones client.ts configures: dates as 'YYYY-MM-DD', int8 as
 * numbers, numeric as exact text) then read. PGlite's own parsers differ (dates become Date
 * objects, json parses twice), and a query must not answer differently by mode.
 *
 * PGlite is one session. Statements from pool.query() run one at a time; a client from connect()
 * holds the session until release(), so the statements between its BEGIN and COMMIT are never
 * interleaved with anyone else's (the migration runner's transactions).
 */
import { createRequire } from 'node:module'
import { mkdirSync } from 'node:fs'
import { PGlite } from '@electric-sql/pglite'
import type { Results } from '@electric-sql/pglite'
import pg from 'pg'
import type { Pool } from './client.ts'

const { prepareValue } = createRequire(import.meta.url)('pg/lib/utils.js') as { prepareValue(value: unknown): unknown }

/** What pg.Pool#query accepts as its first argument, in the forms the service and drizzle use. */
interface QueryConfig {
  text: string
  values?: unknown[]
  rowMode?: 'array'
  types?: { getTypeParser(oid: number, format?: string): (value: string) => unknown }
}

export interface EmbeddedQueryResult {
  rows: unknown[]
  rowCount: number | null
  fields: { name: string; dataTypeID: number }[]
  command: string
}

type Query = (text: string | QueryConfig, values?: unknown[]) => Promise<EmbeddedQueryResult>

export interface EmbeddedPoolClient {
  query: Query
  release(err?: unknown): void
}

/** One waiter after another: the session's owner. */
class SessionLock {
  #tail: Promise<void> = Promise.resolve()

  /** Resolves with the function that hands the session on. */
  acquire(): Promise<() => void> {
    let release!: () => void
    const held = new Promise<void>((resolve) => {
      release = resolve
    })
    const turn = this.#tail.then(() => release)
    this.#tail = this.#tail.then(() => held)
    return turn
  }
}

/**
 * The pg.Pool subset over one PGlite. Its class name contains "Pool": drizzle's node-postgres
 * driver recognises a pool by that and takes a client (connect/release) for a transaction.
 */
export class EmbeddedPool {
  readonly #db: PGlite
  readonly #lock = new SessionLock()
  /** PGlite's parsers replaced by "keep the text", for every type it knows (arrays included). */
  #rawText: Record<number, (value: string) => string> = {}
  #ended = false
  /** LISTENers by channel: also told of NOTIFYs raised by wire-protocol clients (serveEmbeddedDatabase). */
  readonly #listeners = new Map<string, Set<(payload: string) => void>>()
  /** Read by engine.ts's connectionString(): an embedded pool has none (no LISTEN connection to open). */
  readonly options: { connectionString?: string } = {}

  constructor(db: PGlite) {
    this.#db = db
    this.#refreshRawText()
  }

  /** The PGlite instance: LISTEN, the wire-protocol server. */
  get db(): PGlite {
    return this.#db
  }

  get ended(): boolean {
    return this.#ended
  }

  // Types created later (an enum in a migration) get PGlite's parsers too: refreshed after each
  // statement that may create one is cheap to skip, so it runs after migrations (refreshTypes).
  #refreshRawText(): void {
    const known = (this.#db as unknown as { parsers: Record<string, unknown> }).parsers
    const raw: Record<number, (value: string) => string> = {}
    const keep = (value: string): string => value
    for (const oid of [...Object.keys(known).map(Number), ...Object.values(pg.types.builtins)]) {
      if (Number.isInteger(oid)) raw[oid] = keep
    }
    this.#rawText = raw
  }

  /** Re-reads the array types PGlite knows (after migrations created types). */
  async refreshTypes(): Promise<void> {
    await this.#db.refreshArrayTypes()
    this.#refreshRawText()
  }

  async #run(text: string | QueryConfig, values?: unknown[]): Promise<EmbeddedQueryResult> {
    if (this.#ended) throw new Error('the embedded database is closed')
    const config: QueryConfig = typeof text === 'string' ? { text } : text
    const params = (values ?? config.values ?? []).map((v) => prepareValue(v))
    // Rows as arrays whatever the caller asked: objects are built below, column by column, so two
    // columns of one name end as pg leaves them (the later one wins) with each its own parser.
    const options = { rowMode: 'array' as const, parsers: this.#rawText }
    // Without parameters, the simple protocol (as pg does): several statements may run in one call.
    let results: Results[]
    try {
      results = params.length === 0
        ? await this.#db.exec(config.text, options)
        : [await this.#db.query(config.text, params, options)]
    } catch (err) {
      // PGlite attaches the query's options (hundreds of parser functions) to its errors: not for logs.
      if (err && typeof err === 'object') delete (err as { queryOptions?: unknown }).queryOptions
      throw err
    }
    const converted = results.map((r) => toPgResult(r, config))
    if (converted.length === 1) return converted[0] as EmbeddedQueryResult
    // pg answers a multi-statement text with an array of results; no caller here relies on it.
    return converted.at(-1) ?? { rows: [], rowCount: 0, fields: [], command: '' }
  }

  async query(text: string | QueryConfig, values?: unknown[]): Promise<EmbeddedQueryResult> {
    const release = await this.#lock.acquire()
    try {
      return await this.#run(text, values)
    } finally {
      release()
    }
  }

  /** The session for a sequence of statements (a transaction); others wait until release(). */
  async connect(): Promise<EmbeddedPoolClient> {
    const release = await this.#lock.acquire()
    let released = false
    return {
      query: (text, values) => {
        if (released) return Promise.reject(new Error('query on a released embedded client'))
        return this.#run(text, values)
      },
      release: () => {
        if (released) return
        released = true
        release()
      },
    }
  }

  /** Idle-connection errors cannot happen in-process; accepted for pg.Pool compatibility. */
  on(_event: 'error', _listener: (err: Error) => void): this {
    return this
  }

  /** Closes PGlite after the statements under way: its files are consistent on disk. */
  async end(): Promise<void> {
    if (this.#ended) return
    const release = await this.#lock.acquire()
    this.#ended = true
    try {
      await this.#db.close()
    } finally {
      release()
    }
  }

  /**
   * Calls `onPayload` for every NOTIFY on `channel`, also those raised by triggers on statements
   * of psql clients served by the wire-protocol server (same session). Returns the unsubscribe.
   */
  async listen(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>> {
    const unlisten = await this.#db.listen(channel, onPayload)
    let set = this.#listeners.get(channel)
    if (!set) this.#listeners.set(channel, (set = new Set()))
    set.add(onPayload)
    return async () => {
      set.delete(onPayload)
      if (!this.#ended) await unlisten()
    }
  }

  /** A NOTIFY seen in a wire-protocol client's answer: PGlite tells its own listeners only of its own queries'. */
  notifyFromWire(channel: string, payload: string): void {
    for (const listener of this.#listeners.get(channel) ?? []) listener(payload)
  }
}

function toPgResult(result: Results, config: QueryConfig): EmbeddedQueryResult {
  const fields = result.fields.map((f) => ({ name: f.name, dataTypeID: f.dataTypeID }))
  const parsers = fields.map((f) => (config.types ?? pg.types).getTypeParser(f.dataTypeID, 'text'))
  const parse = (value: unknown, i: number): unknown => (value === null ? null : (parsers[i] as (v: string) => unknown)(value as string))
  const arrays = (result.rows as unknown[][]).map((row) => row.map(parse))
  const rows = config.rowMode === 'array'
    ? arrays
    : arrays.map((row) => {
        const out: Record<string, unknown> = {}
        fields.forEach((f, i) => {
          out[f.name] = row[i]
        })
        return out
      })
  const command = (result as { command?: string }).command ?? ''
  // pg's rowCount: rows affected by INSERT/UPDATE/DELETE, rows returned by SELECT.
  const rowCount = (result as { rowCount?: number }).rowCount ?? (command === 'SELECT' ? rows.length : result.affectedRows ?? null)
  return { rows, rowCount, fields, command }
}

/** An EmbeddedPool where pg.Pool is expected (db/'s modules take a Pool). */
export function asPool(pool: EmbeddedPool): Pool {
  return pool as unknown as Pool
}

/** The EmbeddedPool behind a Pool, when it is one. */
export function embeddedPoolOf(pool: Pool): EmbeddedPool | undefined {
  return (pool as unknown) instanceof EmbeddedPool ? (pool as unknown as EmbeddedPool) : undefined
}

/** Opens (creating when missing) the embedded database in `dataDir`, its sessions in UTC like the pool's. */
export async function openEmbeddedDatabase(dataDir: string): Promise<EmbeddedPool> {
  mkdirSync(dataDir, { recursive: true })
  const db = await PGlite.create(dataDir)
  await db.exec("SET TIME ZONE 'UTC'")
  return new EmbeddedPool(db)
}

/**
 * Serves the embedded database over the Postgres wire protocol on 127.0.0.1:`port` (psql, the
 * spec's monitoring queries). Its clients share the one session with the service, one statement
 * at a time. Returns the function that stops serving.
 */
export async function serveEmbeddedDatabase(pool: EmbeddedPool, port: number): Promise<() => Promise<void>> {
  const { PGLiteSocketServer } = await import('@electric-sql/pglite-socket')
  const db = pool.db
  // The server runs clients' messages through execProtocolRawStream, where PGlite does not call
  // its listeners: a trigger's NOTIFY from `UPDATE users ...` in psql would reach psql only, and
  // the limits cache would keep the old tier. The answers are read for NotificationResponse
  // messages, which go to the pool's listeners as well.
  const watched = new Proxy(db, {
    get(target, prop) {
      if (prop === 'execProtocolRawStream') {
        return async (message: Uint8Array, options: { onRawData: (data: Uint8Array) => void }) => {
          const chunks: Uint8Array[] = []
          const result = await target.execProtocolRawStream(message, {
            ...options,
            onRawData: (data: Uint8Array) => {
              chunks.push(data.slice())
              options.onRawData(data)
            },
          })
          for (const { channel, payload } of notifications(Buffer.concat(chunks))) pool.notifyFromWire(channel, payload)
          return result
        }
      }
      const value: unknown = Reflect.get(target, prop, target)
      // PGlite's methods use private fields: they must run on the instance itself.
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value
    },
  })
  const server = new PGLiteSocketServer({ db: watched, port, host: '127.0.0.1', maxConnections: 8 })
  await server.start()
  return () => server.stop()
}

/** The NotificationResponse ('A') messages in a stream of backend messages. */
function notifications(data: Buffer): { channel: string; payload: string }[] {
  const found: { channel: string; payload: string }[] = []
  let at = 0
  while (at + 5 <= data.length) {
    const type = data[at]
    const length = data.readInt32BE(at + 1)
    const end = at + 1 + length
    if (length < 4 || end > data.length) break
    if (type === 0x41) {
      // Int32 sender pid, then channel and payload as NUL-terminated strings.
      const channelEnd = data.indexOf(0, at + 9)
      const payloadEnd = data.indexOf(0, channelEnd + 1)
      if (channelEnd > 0 && payloadEnd > 0 && payloadEnd < end) {
        found.push({ channel: data.toString('utf8', at + 9, channelEnd), payload: data.toString('utf8', channelEnd + 1, payloadEnd) })
      }
    }
    at = end
  }
  return found
}

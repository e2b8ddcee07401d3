/**
 * Queries on `usage_events`: threshold events (docs/events.md) and the state of their webhook
 * delivery. The flusher inserts crossings copied from the counter store; the delivery worker
 * claims due events, then marks each delivered, failed (with its next attempt) or given up; the
 * admin service re-arms a day's events; the admin route lists them.
 *
 * Times: `created_at` is the crossing decision's time and every time passed in here comes from
 * the service's clock (ms), so events, re-arms and the retry schedule agree with the days the
 * decisions used, whatever Postgres' own clock says.
 */
import { numberArrayLiteral, textArrayLiteral } from './array-literal.ts'
import type { Pool } from './client.ts'

/** A crossing as the history records it. */
export interface EventInsert {
  userId: string
  /** A daily metric's name. */
  metric: string
  /** UTC day, YYYY-MM-DD. */
  day: string
  threshold: 80 | 100
  /** Exact decimal text of the value after the crossing decision, and of the limit. */
  current: string
  limit: string
  /** When the decision ran, ms. */
  at: number
}

export interface InsertEventsResult {
  /** Events recorded, per threshold (a crossing already recorded, or with a live event, adds none). */
  inserted: { 80: number; 100: number }
  /** Users of the batch missing from `users` (deleted meanwhile): their crossings were left out. */
  missingUsers: string[]
}

/** Postgres' foreign_key_violation. */
const FOREIGN_KEY_VIOLATION = '23503'

// One statement per batch, each column one array literal (see array-literal.ts). DO NOTHING with no
// conflict target covers both unique indexes: a crossing with a live event of its user, metric,
// day and threshold, and the same crossing copied a second time. Oldest first (ties in the order
// given), so ids follow the crossings and of two of one key the first is the event. Due at once:
// next_attempt_at = created_at.
const INSERT_EVENTS = `INSERT INTO usage_events
         (user_id, metric, date, threshold, current, "limit", created_at, next_attempt_at)
  SELECT t.u, t.m, t.d, t.th, t.c, t.l, t.at, t.at
    FROM unnest($1::uuid[], $2::text[], $3::date[], $4::smallint[], $5::numeric[], $6::numeric[], $7::timestamptz[])
         WITH ORDINALITY AS t(u, m, d, th, c, l, at, n)
   ORDER BY t.at, t.n
  ON CONFLICT DO NOTHING
  RETURNING threshold`

async function insertRows(pool: Pool, rows: readonly EventInsert[]): Promise<InsertEventsResult['inserted']> {
  const { rows: inserted } = await pool.query<{ threshold: number }>(INSERT_EVENTS, [
    textArrayLiteral(rows.map((r) => r.userId)),
    textArrayLiteral(rows.map((r) => r.metric)),
    textArrayLiteral(rows.map((r) => r.day)),
    numberArrayLiteral(rows.map((r) => r.threshold)),
    textArrayLiteral(rows.map((r) => r.current)),
    textArrayLiteral(rows.map((r) => r.limit)),
    textArrayLiteral(rows.map((r) => new Date(r.at).toISOString())),
  ])
  const counts = { 80: 0, 100: 0 }
  for (const r of inserted) counts[r.threshold === 100 ? 100 : 80]++
  return counts
}

/**
 * Records crossings in one statement; crossings already recorded are left out. A user missing
 * from `users` (deleted meanwhile) costs nothing in the common case: only when the foreign key
 * fails are the batch's users looked up, and the missing ones' crossings left out and reported.
 */
export async function insertEvents(pool: Pool, rows: readonly EventInsert[]): Promise<InsertEventsResult> {
  if (rows.length === 0) return { inserted: { 80: 0, 100: 0 }, missingUsers: [] }
  try {
    return { inserted: await insertRows(pool, rows), missingUsers: [] }
  } catch (err) {
    if ((err as { code?: string }).code !== FOREIGN_KEY_VIOLATION) throw err
  }
  const ids = [...new Set(rows.map((r) => r.userId))]
  const { rows: known } = await pool.query<{ id: string }>('SELECT id::text FROM users WHERE id = ANY($1::uuid[])', [ids])
  const present = new Set(known.map((k) => k.id))
  const kept = rows.filter((r) => present.has(r.userId))
  const missingUsers = ids.filter((id) => !present.has(id))
  return { inserted: kept.length > 0 ? await insertRows(pool, kept) : { 80: 0, 100: 0 }, missingUsers }
}

/** An event as the admin route lists it: the webhook body's fields plus its history and delivery state. */
export interface EventRow {
  id: number
  user_id: string
  metric: string
  date: string
  threshold: number
  /** Exact decimal text. */
  current: string
  limit: string
  /** ISO 8601, UTC, milliseconds. */
  created_at: string
  rearmed_at: string | null
  attempts: number
  next_attempt_at: string
  delivered_at: string | null
  last_error: string | null
  gave_up_at: string | null
}

/** A timestamptz column as ISO 8601 text (pg would make a Date; PGlite through the pool, the same). */
const iso = (column: string): string => `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS ${column}`

const EVENT_COLUMNS = `id, user_id::text AS user_id, metric, date, threshold::int AS threshold, current::text AS current,
  "limit"::text AS "limit", ${iso('created_at')}, ${iso('rearmed_at')}, attempts, ${iso('next_attempt_at')},
  ${iso('delivered_at')}, last_error, ${iso('gave_up_at')}`

/** Up to `limit` events with an id above `after`, oldest (lowest id) first. */
export async function listEvents(pool: Pool, after: number, limit: number): Promise<EventRow[]> {
  const { rows } = await pool.query<EventRow>(
    `SELECT ${EVENT_COLUMNS} FROM usage_events WHERE id > $1 ORDER BY id LIMIT $2`,
    [after, limit],
  )
  return rows
}

/** Which events of a day a re-arm ends. */
export interface RearmScope {
  /** UTC day, YYYY-MM-DD. */
  day: string
  /** The re-arm's time (ms): events of crossings up to it are ended. */
  at: number
  /** Only these metrics (default: all). */
  metrics?: readonly string[] | undefined
}

/**
 * Ends the live events of a day — of some users, or of everyone (`userIds` null) — recorded for
 * crossings up to `at`, so the next crossing of that day is a new event. Returns the rows re-armed.
 */
export async function rearmEvents(pool: Pool, scope: RearmScope & { userIds: readonly string[] | null }): Promise<number> {
  if (scope.userIds?.length === 0) return 0
  const values: unknown[] = [scope.day, new Date(scope.at).toISOString()]
  let where = 'date = $1 AND rearmed_at IS NULL AND created_at <= $2'
  if (scope.userIds !== null) where += ` AND user_id = ANY($${values.push(scope.userIds)}::uuid[])`
  if (scope.metrics) where += ` AND metric = ANY($${values.push(scope.metrics)}::text[])`
  const result = await pool.query(`UPDATE usage_events SET rearmed_at = $2 WHERE ${where}`, values)
  return result.rowCount ?? 0
}

/** rearmEvents for every user of `tier` (a tier's limits changed). */
export async function rearmTierEvents(pool: Pool, scope: RearmScope & { tier: string }): Promise<number> {
  const values: unknown[] = [scope.day, new Date(scope.at).toISOString(), scope.tier]
  let where = 'e.date = $1 AND e.rearmed_at IS NULL AND e.created_at <= $2 AND u.id = e.user_id AND u.tier = $3'
  if (scope.metrics) where += ` AND e.metric = ANY($${values.push(scope.metrics)}::text[])`
  const result = await pool.query(`UPDATE usage_events e SET rearmed_at = $2 FROM users u WHERE ${where}`, values)
  return result.rowCount ?? 0
}

/** An event claimed for one delivery attempt. */
export interface ClaimedEvent extends Pick<EventRow, 'id' | 'user_id' | 'metric' | 'date' | 'threshold' | 'current' | 'limit' | 'created_at'> {
  /** Attempts so far, this one included. */
  attempts: number
}

/**
 * Claims up to `limit` undelivered events due at `now` (ms) for one attempt each: their next
 * attempt moves to `now + leaseMs` and their attempt count goes up, in the same statement. Rows
 * another replica is claiming at the same moment are skipped (SKIP LOCKED), and once claimed a row
 * is not due again until its lease ends: an attempt cut short by a crash is retried after it.
 */
export async function claimDueEvents(pool: Pool, now: number, leaseMs: number, limit: number): Promise<ClaimedEvent[]> {
  const { rows } = await pool.query<ClaimedEvent>(
    `UPDATE usage_events SET next_attempt_at = $2, attempts = attempts + 1
      WHERE id IN (SELECT id FROM usage_events
                    WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $1
                    ORDER BY next_attempt_at, id LIMIT $3
                    FOR UPDATE SKIP LOCKED)
      RETURNING id, user_id::text AS user_id, metric, date, threshold::int AS threshold, current::text AS current,
                "limit"::text AS "limit", ${iso('created_at')}, attempts`,
    [new Date(now).toISOString(), new Date(now + leaseMs).toISOString(), limit],
  )
  return rows.sort((a, b) => a.id - b.id)
}

/** The receiver took event `id` (2xx) at `at`. */
export async function markDelivered(pool: Pool, id: number, at: number): Promise<void> {
  await pool.query('UPDATE usage_events SET delivered_at = $2, last_error = NULL WHERE id = $1 AND delivered_at IS NULL',
    [id, new Date(at).toISOString()])
}

/** An attempt failed with `error`; the next one is due at `nextAt`. */
export async function markFailed(pool: Pool, id: number, error: string, nextAt: number): Promise<void> {
  await pool.query('UPDATE usage_events SET last_error = $2, next_attempt_at = $3 WHERE id = $1 AND delivered_at IS NULL',
    [id, error, new Date(nextAt).toISOString()])
}

/** The last attempt failed with `error` past the retry period: no more attempts. */
export async function markGaveUp(pool: Pool, id: number, error: string, at: number): Promise<void> {
  await pool.query('UPDATE usage_events SET last_error = $2, gave_up_at = $3 WHERE id = $1 AND delivered_at IS NULL',
    [id, error, new Date(at).toISOString()])
}

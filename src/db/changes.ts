/**
 * The `quota_changes` notification channel. Triggers on `users` and `usage_limits` NOTIFY it on
 * every change (also from plain SQL in psql); the service NOTIFYs `reset` after a manual reset.
 * Every process LISTENs (limits cache) and drops what it cached.
 */
import { createClient } from './client.ts'
import type { Pool } from './client.ts'
import { embeddedPoolOf } from './pglite-pool.ts'

export const CHANGE_CHANNEL = 'quota_changes'

/** Payloads: `user:<id>` (a user's tier), `reset` (counters zeroed), anything else = tier limits. */
export async function notifyChange(pool: Pool, payload: string): Promise<void> {
  await pool.query('SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, payload])
}

/** An open LISTEN on CHANGE_CHANNEL. */
export interface ChangeSubscription {
  close(): Promise<void>
}

export interface ChangeHandlers {
  onPayload(payload: string): void
  /** The LISTEN session ended by itself (Postgres restarted): notifications are lost until a new one. */
  onEnd(): void
  onError(err: Error): void
}

/**
 * LISTENs on CHANGE_CHANNEL: on a session of its own (`databaseUrl`) for Postgres, in-process for
 * the embedded database, whose one session sees every NOTIFY — the service's, and those of
 * triggers fired by psql clients it serves — and never ends while the process runs.
 */
export async function subscribeChanges(pool: Pool, databaseUrl: string | undefined, handlers: ChangeHandlers): Promise<ChangeSubscription> {
  const embedded = embeddedPoolOf(pool)
  if (embedded) {
    const unlisten = await embedded.listen(CHANGE_CHANNEL, handlers.onPayload)
    return { close: unlisten }
  }
  if (databaseUrl === undefined) throw new Error('LISTEN needs a connection string (databaseUrl)')
  const client = createClient(databaseUrl, handlers.onError)
  let closing = false
  client.on('notification', (msg) => handlers.onPayload(msg.payload ?? ''))
  client.on('end', () => {
    if (!closing) handlers.onEnd()
  })
  try {
    await client.connect()
    await client.query(`LISTEN ${CHANGE_CHANNEL}`)
  } catch (err) {
    closing = true
    await client.end().catch(() => {})
    throw err
  }
  return {
    close: async () => {
      closing = true
      await client.end().catch(() => {})
    },
  }
}

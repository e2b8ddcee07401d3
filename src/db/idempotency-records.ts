/**
 * Queries on `idempotency_records`: the flusher's copies of idempotent answers, read back only
 * after the counter store lost its state, and deleted once expired.
 */
import { and, eq, gt, lt, sql } from 'drizzle-orm'
import type { Pool } from './client.ts'
import { queryBuilder } from './query-builder.ts'
import { idempotencyRecords } from './schema.ts'

export interface IdempotencyRecord {
  userId: string
  key: string
  /** The counter store's encoding of the answer. */
  answer: string
  /** ms since the epoch. */
  expiresAt: number
}

/**
 * Writes records in one statement (unnest arrays, like the daily totals). A key reused after it
 * expired replaces the old record; the same record written twice changes nothing.
 */
export async function writeIdempotencyRecords(pool: Pool, records: readonly IdempotencyRecord[]): Promise<number> {
  if (records.length === 0) return 0
  const result = await pool.query(
    `INSERT INTO idempotency_records AS r (user_id, key, answer, expires_at)
     SELECT t.u, t.k, t.a, to_timestamp(t.e / 1000.0)
       FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[]) AS t(u, k, a, e)
     ON CONFLICT (user_id, key) DO UPDATE SET answer = EXCLUDED.answer, expires_at = EXCLUDED.expires_at
     WHERE r.expires_at < EXCLUDED.expires_at`,
    [records.map((r) => r.userId), records.map((r) => r.key), records.map((r) => r.answer), records.map((r) => Math.round(r.expiresAt))],
  )
  return result.rowCount ?? 0
}

/** The live record of a user's key, if the flusher kept one. */
export async function readIdempotencyRecord(pool: Pool, userId: string, key: string): Promise<Omit<IdempotencyRecord, 'userId' | 'key'> | undefined> {
  const rows = await queryBuilder(pool)
    .select({ answer: idempotencyRecords.answer, expiresAt: sql<string>`(extract(epoch from ${idempotencyRecords.expiresAt}) * 1000)::bigint::text` })
    .from(idempotencyRecords)
    .where(and(eq(idempotencyRecords.userId, userId), eq(idempotencyRecords.key, key), gt(idempotencyRecords.expiresAt, sql`now()`)))
  const row = rows[0]
  return row ? { answer: row.answer, expiresAt: Number(row.expiresAt) } : undefined
}

/** Deletes expired records. Returns how many. */
export async function deleteExpiredIdempotencyRecords(pool: Pool): Promise<number> {
  const result = await queryBuilder(pool).delete(idempotencyRecords).where(lt(idempotencyRecords.expiresAt, sql`now()`))
  return result.rowCount ?? 0
}

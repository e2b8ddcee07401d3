/**
 * Queries on `scheduler_runs`: one row per (job, day) that ran, so a scheduled job runs once per
 * day whichever replica leads and however often its trigger fires.
 */
import type { Pool } from './client.ts'

export async function hasRun(pool: Pool, job: string, day: string): Promise<boolean> {
  const { rowCount } = await pool.query('SELECT 1 FROM scheduler_runs WHERE job = $1 AND day = $2', [job, day])
  return (rowCount ?? 0) > 0
}

/** Records a run; false when another run of the same job and day was recorded first. */
export async function recordRun(pool: Pool, job: string, day: string, detail: Record<string, unknown>): Promise<boolean> {
  const { rowCount } = await pool.query(
    'INSERT INTO scheduler_runs (job, day, detail) VALUES ($1, $2, $3) ON CONFLICT (job, day) DO NOTHING',
    [job, day, JSON.stringify(detail)],
  )
  return (rowCount ?? 0) > 0
}

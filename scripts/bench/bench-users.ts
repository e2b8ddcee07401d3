/**
 * The bench's tiers and users, in a module of their own so a bench server process (the embedded
 * variant seeds its own database) can load them without the test helpers behind env.ts.
 */

/** What the seed needs of a pool: pg's and the embedded database's alike. */
interface Queryable {
  query(text: string, values?: unknown[]): Promise<unknown>
}

/** Deterministic UUID-shaped ids, so runs are comparable. */
export function benchUserId(group: number, i: number): string {
  const hex = (group * 1_000_000 + i).toString(16).padStart(12, '0')
  return `00000000-0000-4000-8000-${hex}`
}

/** The users every section spends as (`bench` tier) and the over-limit ones (`bench_one` tier). */
export function benchUsers(userCount: number): { users: string[]; overUsers: string[] } {
  return {
    users: Array.from({ length: userCount }, (_, i) => benchUserId(1, i)),
    overUsers: Array.from({ length: userCount }, (_, i) => benchUserId(2, i)),
  }
}

/**
 * Tier `bench`: limits far above anything a run reaches. Tier `bench_one`: every limit 1, so a
 * user spent once is over the limit — the same state the peers' over-limit variants (limit 1,
 * spent in the warm-up) are in, so the abuse case compares like with like.
 */
export async function seedBenchUsers(pool: Queryable, users: string[], overUsers: string[]): Promise<void> {
  await pool.query(`INSERT INTO usage_limits (tier, max_deployments_per_day, max_api_calls_per_day, max_compute_hours_per_day, max_storage_gb)
    VALUES ('bench', 2000000000, 2000000000, 1000000000, 1000000000), ('bench_one', 1, 1, 1, 1)`)
  await pool.query(
    `INSERT INTO users (id, username, tier) SELECT u, u::text, 'bench' FROM unnest($1::uuid[]) u
     UNION ALL SELECT u, u::text, 'bench_one' FROM unnest($2::uuid[]) u`,
    [users, overUsers],
  )
}

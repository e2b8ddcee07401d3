/**
 * Postgres errors as the rest of the service needs them: a named error for a tier that does not
 * exist, and the two fields of pg's errors the queries branch on.
 */

/** A tier named by a caller does not exist in usage_limits. */
export class UnknownTierError extends Error {
  override name = 'UnknownTierError'
  constructor(readonly tier: string) {
    super(`Unknown tier "${tier}"`)
  }
}

/** The pg error itself: drizzle wraps it (DrizzleQueryError) and keeps it as the cause. */
function pgError(err: unknown): { code?: string; constraint?: string } | null {
  const e = err as { code?: string; constraint?: string; cause?: unknown } | null
  if (e && e.code === undefined && e.cause !== undefined) return pgError(e.cause)
  return e
}

/** The SQLSTATE of a pg error (undefined for anything else). */
export function pgCode(err: unknown): string | undefined {
  return pgError(err)?.code
}

/** The constraint a pg error names. */
export function pgConstraint(err: unknown): string | undefined {
  return pgError(err)?.constraint
}

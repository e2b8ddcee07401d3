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

/** The SQLSTATE of a pg error (undefined for anything else). */
export function pgCode(err: unknown): string | undefined {
  return (err as { code?: string } | null)?.code
}

/** The constraint a pg error names. */
export function pgConstraint(err: unknown): string | undefined {
  return (err as { constraint?: string } | null)?.constraint
}

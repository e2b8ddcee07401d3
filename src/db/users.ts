/**
 * Queries on `users`: provisioning on first sight, lookups, tier changes. Every write that can
 * race (two first requests of one user, two replicas) relies on ON CONFLICT instead of
 * read-then-write.
 */
import { eq } from 'drizzle-orm'
import { isUuid } from '../ids.ts'
import type { Pool } from './client.ts'
import { UnknownTierError, pgCode, pgConstraint } from './errors.ts'
import { queryBuilder } from './query-builder.ts'
import { users } from './schema.ts'

const USER_COLUMNS = { id: users.id, username: users.username, tier: users.tier }

export interface UserRow {
  id: string
  username: string
  tier: string
}

export interface EnsureUserInput {
  /** The token's `sub`, already validated as a UUID; normalised to lower case here too. */
  id: string
  /** The token's `username` claim, if any. */
  username?: string | undefined
  /** Tier of a user first seen (DEFAULT_TIER). */
  defaultTier: string
}

async function insertIfAbsent(pool: Pool, id: string, username: string, tier: string): Promise<UserRow | undefined> {
  try {
    // No conflict target: a clash on the id (already provisioned) or on the username (taken) both
    // leave the row alone, and a concurrent insert of the same id waits for that one and yields.
    const rows = await queryBuilder(pool).insert(users).values({ id, username, tier })
      .onConflictDoNothing().returning(USER_COLUMNS)
    return rows[0]
  } catch (err) {
    if (pgCode(err) === '23503' && pgConstraint(err) === 'users_tier_fkey') {
      throw new Error(`DEFAULT_TIER "${tier}" is not a tier in usage_limits`, { cause: err })
    }
    throw err
  }
}

/**
 * The user of a token, created on first sight: tier = `defaultTier`, username =
 * the claim, else the id; when the claimed username belongs to another id, the id is used. An
 * existing row is never changed. Safe under any concurrency.
 *
 * A claimed username that is itself a UUID other than the user's id is ignored: otherwise one
 * user could squat the id-as-username fallback of another and lock them out.
 */
export async function ensureUser(pool: Pool, input: EnsureUserInput): Promise<UserRow> {
  const id = input.id.toLowerCase()
  const claimed = input.username && !(isUuid(input.username) && input.username.toLowerCase() !== id)
    ? input.username
    : undefined
  const candidates = claimed !== undefined && claimed !== id ? [claimed, id] : [id]
  for (const username of candidates) {
    const created = await insertIfAbsent(pool, id, username, input.defaultTier)
    if (created) return created
    // Nothing inserted: either the id exists (return it untouched) or the username is taken.
    const existing = await getUser(pool, id)
    if (existing) return existing
  }
  throw new Error(`cannot provision user ${id}: username "${id}" belongs to another user`)
}

/** The user with this id, or undefined. */
export async function getUser(pool: Pool, id: string): Promise<UserRow | undefined> {
  const rows = await queryBuilder(pool).select(USER_COLUMNS).from(users).where(eq(users.id, id.toLowerCase()))
  return rows[0]
}

/**
 * Sets a user's tier. Returns the updated row, or undefined when the user does not exist.
 * Throws UnknownTierError when `tier` is not a row of usage_limits.
 */
export async function setUserTier(pool: Pool, id: string, tier: string): Promise<UserRow | undefined> {
  try {
    const rows = await queryBuilder(pool).update(users).set({ tier }).where(eq(users.id, id.toLowerCase())).returning(USER_COLUMNS)
    return rows[0]
  } catch (err) {
    if (pgCode(err) === '23503' && pgConstraint(err) === 'users_tier_fkey') throw new UnknownTierError(tier)
    throw err
  }
}

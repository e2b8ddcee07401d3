/**
 * The context kept with an idempotent answer, in the one text both stores (and the history's
 * idempotency_records) hold: JSON, since a tier name may hold any character.
 */
import type { AnswerContext } from './store.ts'

/** A context as the stores keep it: JSON [day, tier] or, for a reserve, [day, tier, id, expiresAt]. */
export function encodeContext(context: AnswerContext): string {
  return JSON.stringify(context.hold === undefined
    ? [context.day, context.tier]
    : [context.day, context.tier, context.hold.id, context.hold.expiresAt])
}

/** Reads encodeContext's text; also the "<day> <tier>" text of answers stored by earlier releases. */
export function decodeContext(text: string): AnswerContext {
  if (text.startsWith('[')) {
    const [day, tier, id, expiresAt] = JSON.parse(text) as [string, string, string?, number?]
    return id === undefined || expiresAt === undefined ? { day, tier } : { day, tier, hold: { id, expiresAt } }
  }
  const space = text.indexOf(' ')
  return { day: text.slice(0, space), tier: text.slice(space + 1) }
}

/**
 * Postgres array literals (`{a,b,c}`) built with one join, for statements that take a whole batch
 * as array parameters (`unnest($1::uuid[], ...)`). pg serializes a JS array element by element
 * (each escaped, quoted and concatenated): for the flusher's 5000-row batches of 7 columns that
 * was a third of its own CPU. Passed as one text parameter, the literal is parsed by the cast in
 * the statement, exactly as pg's serialized form would be.
 */

/** Elements that mean themselves unquoted in an array literal (no separator, quote, brace, space). */
const BARE = /^[0-9A-Za-z.:+-]+$/

/** One element: bare when it is safe to, else quoted with `"` and `\` escaped (never NULL). */
function element(value: string): string {
  // NULL unquoted is a null element; quoted, it is the text "NULL" (what pg sends for the string).
  if (BARE.test(value) && value.toUpperCase() !== 'NULL') return value
  return `"${value.replace(/["\\]/g, '\\$&')}"`
}

/**
 * `{...}` of text values, e.g. UUIDs, dates or decimal text. Every value is checked: one with a
 * separator or quote in it is quoted rather than splitting into two elements, which would shift
 * every later row of the batch against the other columns.
 */
export function textArrayLiteral(values: readonly string[], at?: readonly number[]): string {
  const n = at ? at.length : values.length
  const parts = new Array<string>(n)
  for (let i = 0; i < n; i++) parts[i] = element(values[at ? (at[i] as number) : i] as string)
  return `{${parts.join(',')}}`
}

/**
 * `{...}` of numbers for an integer column. Numbers are written as String() writes them (as pg
 * does): a value Postgres cannot take (NaN, 1e+21) fails the cast, with the batch, as before.
 */
export function numberArrayLiteral(values: readonly number[], at?: readonly number[]): string {
  if (!at) return `{${values.join(',')}}`
  const parts = new Array<number>(at.length)
  for (let i = 0; i < at.length; i++) parts[i] = values[at[i] as number] as number
  return `{${parts.join(',')}}`
}

/**
 * Time is a parameter: every decision takes its UTC day from a Clock, so tests can put a request
 * at 23:59:59.999Z and the next one at 00:00:00.000Z without sleeping.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number
}

export const systemClock: Clock = { now: () => Date.now() }

const DAY_MS = 86_400_000

/** A clock for tests: starts at `start` and moves only when told. */
export class ManualClock implements Clock {
  #now: number
  constructor(start: number | string | Date) {
    this.#now = new Date(start).getTime()
  }
  now(): number {
    return this.#now
  }
  set(to: number | string | Date): void {
    this.#now = new Date(to).getTime()
  }
  advance(ms: number): void {
    this.#now += ms
  }
}

// Decisions ask for the day of "now" millions of times a day; the answer changes once a day.
let cachedDayStart = Number.NaN
let cachedDay = ''

/** The UTC day of `ms` as `YYYY-MM-DD`. */
export function utcDay(ms: number): string {
  const start = Math.floor(ms / 86_400_000) * 86_400_000
  if (start !== cachedDayStart) {
    cachedDay = new Date(start).toISOString().slice(0, 10)
    cachedDayStart = start
  }
  return cachedDay
}

let cachedMidnightFor = Number.NaN
let cachedMidnightIso = ''

/** The next 00:00:00Z strictly after `ms`, as an ISO string (every answer's `resets_at`). */
export function nextMidnightIso(ms: number): string {
  const start = Math.floor(ms / DAY_MS) * DAY_MS
  if (start !== cachedMidnightFor) {
    cachedMidnightIso = new Date(start + DAY_MS).toISOString()
    cachedMidnightFor = start
  }
  return cachedMidnightIso
}

let cachedParsedDay = ''
let cachedParsedStart = Number.NaN

/** Start (ms) of a UTC day given as `YYYY-MM-DD`. */
export function startOfUtcDay(day: string): number {
  if (day !== cachedParsedDay) {
    cachedParsedStart = Date.parse(`${day}T00:00:00Z`)
    cachedParsedDay = day
  }
  return cachedParsedStart
}

/** Start of the UTC day containing `ms`. */
export function dayStart(ms: number): number {
  return Math.floor(ms / DAY_MS) * DAY_MS
}

/** The next 00:00:00Z strictly after `ms`. */
export function nextMidnight(ms: number): number {
  return dayStart(ms) + DAY_MS
}

/** Whole seconds from `ms` to the next UTC midnight, at least 1 (for Retry-After). */
export function secondsToMidnight(ms: number): number {
  return Math.max(1, Math.ceil((nextMidnight(ms) - ms) / 1000))
}

/** The UTC day before `day` (`YYYY-MM-DD`). */
export function previousDay(day: string): string {
  return utcDay(startOfUtcDay(day) - DAY_MS)
}

export { DAY_MS }

/**
 * UTC day arithmetic (DESIGN.md invariant 5): a daily counter starts at 0 at 00:00:00Z, and
 * Retry-After counts the seconds to that midnight — never 0, never a day too many.
 */
import t from 'tap'
import { DAY_MS, ManualClock, dayStart, nextMidnight, previousDay, secondsToMidnight, systemClock, utcDay } from '../../src/clock.ts'

const at = (iso: string): number => Date.parse(iso)

t.test('utcDay is the UTC calendar day', async (t) => {
  t.equal(utcDay(at('2024-03-10T00:00:00.000Z')), '2024-03-10')
  t.equal(utcDay(at('2024-03-10T23:59:59.999Z')), '2024-03-10')
  t.equal(utcDay(at('2024-03-11T00:00:00.000Z')), '2024-03-11')
  // 23:30 in New York on the 10th is already the 11th in UTC.
  t.equal(utcDay(at('2024-03-10T23:30:00-04:00')), '2024-03-11')
  t.equal(utcDay(at('2024-02-29T12:00:00Z')), '2024-02-29', 'leap day')
})

t.test('dayStart and nextMidnight', async (t) => {
  t.equal(dayStart(at('2024-03-10T13:14:15.161Z')), at('2024-03-10T00:00:00Z'))
  t.equal(dayStart(at('2024-03-10T00:00:00Z')), at('2024-03-10T00:00:00Z'), 'midnight is its own day start')
  t.equal(nextMidnight(at('2024-03-10T13:14:15Z')), at('2024-03-11T00:00:00Z'))
  t.equal(nextMidnight(at('2024-03-10T23:59:59.999Z')), at('2024-03-11T00:00:00Z'))
  t.equal(nextMidnight(at('2024-03-10T00:00:00Z')), at('2024-03-11T00:00:00Z'), 'strictly after')
  t.equal(nextMidnight(at('2024-12-31T18:00:00Z')), at('2025-01-01T00:00:00Z'), 'year end')
})

t.test('secondsToMidnight (Retry-After)', async (t) => {
  t.equal(secondsToMidnight(at('2024-03-10T23:59:59.999Z')), 1, 'last millisecond: 1, never 0')
  t.equal(secondsToMidnight(at('2024-03-10T23:59:59.000Z')), 1)
  t.equal(secondsToMidnight(at('2024-03-10T23:59:58.500Z')), 2, 'rounds up')
  t.equal(secondsToMidnight(at('2024-03-11T00:00:00.000Z')), 86_400, 'at midnight: a full day')
  t.equal(secondsToMidnight(at('2024-03-11T00:00:00.001Z')), 86_400)
  t.equal(secondsToMidnight(at('2024-03-11T12:00:00.000Z')), 43_200)
})

t.test('previousDay', async (t) => {
  t.equal(previousDay('2024-03-10'), '2024-03-09')
  t.equal(previousDay('2024-03-01'), '2024-02-29', 'leap year')
  t.equal(previousDay('2023-03-01'), '2023-02-28')
  t.equal(previousDay('2024-01-01'), '2023-12-31')
})

t.test('clocks', async (t) => {
  t.equal(DAY_MS, 86_400_000)
  const clock = new ManualClock('2024-03-10T23:59:59.999Z')
  t.equal(utcDay(clock.now()), '2024-03-10')
  clock.advance(1)
  t.equal(clock.now(), at('2024-03-11T00:00:00Z'))
  t.equal(utcDay(clock.now()), '2024-03-11', 'one millisecond later it is the next day')
  clock.set(new Date('2025-01-01T00:00:00Z'))
  t.equal(clock.now(), at('2025-01-01T00:00:00Z'))
  const before = Date.now()
  const now = systemClock.now()
  t.ok(now >= before && now <= Date.now(), 'systemClock is Date.now')
})

/**
 * Issue 11, finding 1: rebuilding counters from daily_usage never fails on a stored value. Any
 * value Postgres can hold in a usage column reads as one a counter can hold, erring towards more
 * usage (lost Redis state must not give fresh quota).
 */
import t from 'tap'
import { recordedToMicro } from '../../src/db/daily-usage.ts'
import { MAX_TOTAL_MICRO } from '../../src/metrics.ts'

t.test('recorded values are read exactly when they can be, else as the nearest counter value', async (t) => {
  const cases: [string, number, boolean][] = [
    ['0', 0, true],
    ['12', 12e6, true],
    ['9.800000', 9.8e6, true],
    ['0.000001', 1, true],
    ['9000000000', MAX_TOTAL_MICRO, true],
    ['9000000000.000001', MAX_TOTAL_MICRO, false],
    ['9223372036854775807', MAX_TOTAL_MICRO, false],
    ['1' + '0'.repeat(130), MAX_TOTAL_MICRO, false],
    ['000000000000000000012', 12e6, true],
    ['1.0000001', 1_000_001, false],
    ['-0', 0, true],
    ['-3.5', 0, false],
    ['NaN', MAX_TOTAL_MICRO, false],
    ['Infinity', MAX_TOTAL_MICRO, false],
    ['-Infinity', 0, false],
  ]
  for (const [text, micro, exact] of cases) t.same(recordedToMicro(text), { micro, exact }, text.slice(0, 30))
})

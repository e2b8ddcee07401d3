/**
 * The fixed-point core (DESIGN.md 1.5): amounts become integer micro-units exactly, or are refused
 * before anything is counted. Exactness here is what makes "ten 0.1s are exactly 1" true in Redis
 * and in daily_usage.
 */
import fc from 'fast-check'
import t from 'tap'
import {
  InvalidAmountError, MAX_TOTAL_MICRO, METRIC_NAMES, METRICS, decimalTextToMicro, fromMicro, isMetricName, limitToMicro,
  microToDecimalText, toMicro,
} from '../../src/metrics.ts'

/** The message of the InvalidAmountError `fn` throws, or a description that fails the test. */
function refused(fn: () => unknown): string {
  try {
    return `(accepted: ${String(fn())})`
  } catch (err) {
    return err instanceof InvalidAmountError ? `refused: ${err.message}` : `(other error: ${String(err)})`
  }
}

t.test('the registry holds the four metrics of DESIGN.md 1.5', async (t) => {
  t.same(METRIC_NAMES, ['deployments', 'api_calls', 'compute_hours', 'storage'], 'registry order (multi-metric 429)')
  t.match(METRICS, {
    deployments: { unit: 'count', period: 'day', integer: true, column: 'deployments_created' },
    api_calls: { unit: 'count', period: 'day', integer: true, column: 'api_calls' },
    compute_hours: { unit: 'hours', period: 'day', integer: false, column: 'compute_hours' },
    storage: { unit: 'GB', period: 'none', integer: false, allowsDecrement: true, column: 'storage_gb' },
  })
  t.ok(isMetricName('storage'))
  t.notOk(isMetricName('storage_gb'))
  t.notOk(isMetricName('__proto__'))
})

t.test('toMicro converts exactly', async (t) => {
  t.equal(toMicro('compute_hours', 0.1), 100_000)
  let sum = 0
  for (let i = 0; i < 10; i++) sum += toMicro('compute_hours', 0.1)
  t.equal(sum, 1_000_000, 'ten 0.1s are exactly 1')
  t.equal(fromMicro(sum), 1)
  t.equal(toMicro('compute_hours', 0.000001), 1, 'six decimals')
  t.equal(toMicro('compute_hours', 123.456789), 123_456_789)
  t.equal(toMicro('api_calls', 1e9), 1e15, '1e9 is the largest amount')
  t.equal(toMicro('deployments', 1), 1_000_000)
  t.equal(toMicro('storage', -1.5, { allowNegative: true }), -1_500_000, 'negative storage with allowNegative')
  t.equal(fromMicro(9_800_000), 9.8)
})

t.test('toMicro refuses what must not be counted', async (t) => {
  const cases: Array<[string, () => unknown]> = [
    ['7 decimals', () => toMicro('compute_hours', 0.0000001)],
    ['7 decimals (1.1234567)', () => toMicro('compute_hours', 1.1234567)],
    ['1e9 + 1', () => toMicro('api_calls', 1e9 + 1)],
    ['1e9 + 0.5 hours', () => toMicro('compute_hours', 1e9 + 0.5)],
    ['NaN', () => toMicro('compute_hours', NaN)],
    ['Infinity', () => toMicro('compute_hours', Infinity)],
    ['-Infinity', () => toMicro('storage', -Infinity, { allowNegative: true })],
    ['0', () => toMicro('api_calls', 0)],
    ['-0', () => toMicro('api_calls', -0)],
    ['negative', () => toMicro('api_calls', -1)],
    ['negative storage without allowNegative', () => toMicro('storage', -1)],
    ['negative compute_hours even with allowNegative', () => toMicro('compute_hours', -1, { allowNegative: true })],
    ['fractional deployments', () => toMicro('deployments', 1.5)],
    ['fractional api_calls', () => toMicro('api_calls', 0.5)],
    ['a string', () => toMicro('api_calls', '1')],
    ['null', () => toMicro('api_calls', null)],
    ['a boolean', () => toMicro('api_calls', true)],
  ]
  for (const [what, fn] of cases) t.match(refused(fn), /^refused: /, what)
  t.match(refused(() => toMicro('api_calls', 'x', { field: 'metrics.api_calls' })), /metrics\.api_calls/, 'names the field')
  try {
    toMicro('api_calls', -1, { field: 'metrics.api_calls' })
  } catch (err) {
    t.equal((err as InvalidAmountError).field, 'metrics.api_calls', 'carries the field for the 400')
  }
})

t.test('fromMicro(toMicro(x)) round-trips every micro amount', async (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1e15 }), (micro) => toMicro('compute_hours', fromMicro(micro)) === micro),
    { numRuns: 5000 },
  )
  fc.assert(
    fc.property(fc.integer({ min: -1e15, max: 1e15 }), (micro) => decimalTextToMicro(microToDecimalText(micro)) === micro),
    { numRuns: 5000 },
  )
  t.pass('properties hold')
})

t.test('limits and numeric text from Postgres', async (t) => {
  t.equal(limitToMicro(null), null, 'NULL = unlimited')
  t.equal(limitToMicro(10), 10_000_000)
  t.equal(limitToMicro(5000), 5_000_000_000)
  t.equal(limitToMicro('10'), 10_000_000)
  t.equal(limitToMicro('9.800000'), 9_800_000, 'numeric text with trailing zeros')
  t.equal(limitToMicro(0.1), 100_000)
  t.equal(limitToMicro('100000000000000000000'), MAX_TOTAL_MICRO, 'a limit past the maximum total acts as it (regression: the tier failed to load)')
  t.equal(limitToMicro(9e9), MAX_TOTAL_MICRO)
  t.equal(decimalTextToMicro('0'), 0)
  t.equal(decimalTextToMicro('0.000001'), 1)
  t.equal(decimalTextToMicro(' 12 '), 12_000_000)
  t.equal(decimalTextToMicro('-1.5'), -1_500_000)
  t.equal(decimalTextToMicro('1000000000'), 1e15)
  t.equal(decimalTextToMicro('1.1000000'), 1_100_000, 'trailing zeros beyond 6 decimals are fine')
  t.throws(() => decimalTextToMicro('1.1234567'), /more than 6 decimals/)
  t.throws(() => decimalTextToMicro('abc'), /not a decimal/)
  t.throws(() => decimalTextToMicro('1e5'), /not a decimal/)
  t.throws(() => decimalTextToMicro(''), /not a decimal/)
  t.equal(microToDecimalText(1_500_000), '1.5')
  t.equal(microToDecimalText(0), '0')
  t.equal(microToDecimalText(1), '0.000001')
  t.equal(microToDecimalText(10_000_000), '10')
  t.equal(microToDecimalText(-1_500_000), '-1.5')
  t.equal(microToDecimalText(-1), '-0.000001')
  t.equal(microToDecimalText(1e15), '1000000000')
})

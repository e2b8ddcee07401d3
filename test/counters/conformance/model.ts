/**
 * The store's model test: random sequences of decisions (check / consume / increment / refund,
 * with and without idempotency keys), resets and day changes over two users, run against a
 * CounterStore and against a few lines of model of the rules. Every answer must agree, to the
 * micro-unit. Part of the conformance suite, so every store runs it unchanged.
 */
import fc from 'fast-check'
import type { Test } from 'tap'
import type { CounterStore, DecisionAnswer, DecisionMode } from '../../../src/counters/store.ts'
import { METRIC_NAMES, METRICS } from '../../../src/metrics.ts'
import type { MetricName } from '../../../src/metrics.ts'
import { newUserId } from '../../helpers/usage.ts'

const M = 1_000_000
const LIMITS: Record<MetricName, number | null> = { deployments: 10 * M, api_calls: 50 * M, compute_hours: 3 * M, storage: null }

type Cmd =
  | { kind: 'decide'; user: 0 | 1; mode: DecisionMode; metrics: [MetricName, number][]; key: string | undefined }
  | { kind: 'reset'; user: 0 | 1; metrics: MetricName[] }
  | { kind: 'nextDay' }

const amountArb = (metric: MetricName): fc.Arbitrary<number> => METRICS[metric].integer
  ? fc.integer({ min: 1, max: 4 }).map((n) => n * M)
  : fc.constantFrom(1, 100_000, 250_000, 1_000_000, 1_333_333)

const metricsArb = fc.subarray([...METRIC_NAMES], { minLength: 1 })
  .chain((names) => fc.tuple(...names.map((m) => amountArb(m).map((a): [MetricName, number] => [m, a]))))

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('decide' as const),
      user: fc.constantFrom<0 | 1>(0, 1),
      mode: fc.constantFrom<DecisionMode>('check', 'consume', 'consume', 'increment', 'refund'),
      metrics: metricsArb,
      key: fc.option(fc.constantFrom('k1', 'k2', 'k3'), { nil: undefined }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reset' as const), user: fc.constantFrom<0 | 1>(0, 1), metrics: fc.subarray([...METRIC_NAMES], { minLength: 1 }) }) },
  { weight: 1, arbitrary: fc.constant<Cmd>({ kind: 'nextDay' }) },
)

interface Remembered { fingerprint: string; answer: DecisionAnswer }

/** The rules, as plainly as they can be written. */
class Model {
  daily = [new Map<MetricName, number>(), new Map<MetricName, number>()]
  gauge = [0, 0]
  keys = [new Map<string, Remembered>(), new Map<string, Remembered>()]

  value(user: 0 | 1, m: MetricName): number {
    return m === 'storage' ? (this.gauge[user] ?? 0) : (this.daily[user]?.get(m) ?? 0)
  }

  set(user: 0 | 1, m: MetricName, v: number): void {
    if (m === 'storage') this.gauge[user] = v
    else this.daily[user]?.set(m, v)
  }

  decide(cmd: Extract<Cmd, { kind: 'decide' }>, day: string): DecisionAnswer {
    const fingerprint = `${cmd.mode}|${cmd.metrics.map(([m, a]) => `${m}=${a}`).join(';')}`
    const stored = cmd.key === undefined ? undefined : this.keys[cmd.user]?.get(cmd.key)
    if (stored) {
      if (stored.fingerprint !== fingerprint) return { outcome: 'key-reused', replayed: false, deniedIndex: -1, context: undefined, current: [], limits: [] }
      return { ...stored.answer, replayed: true }
    }
    const limits = cmd.metrics.map(([m]) => LIMITS[m])
    const before = cmd.metrics.map(([m]) => this.value(cmd.user, m))
    let deniedIndex = -1
    if (cmd.mode === 'check' || cmd.mode === 'consume') {
      deniedIndex = cmd.metrics.findIndex(([, a], i) => limits[i] !== null && (before[i] ?? 0) + a > (limits[i] ?? 0))
    }
    let current = before
    if (deniedIndex < 0 && cmd.mode !== 'check') {
      const sign = cmd.mode === 'refund' ? -1 : 1
      current = cmd.metrics.map(([, a], i) => Math.max(0, (before[i] ?? 0) + sign * a))
      cmd.metrics.forEach(([m], i) => this.set(cmd.user, m, current[i] ?? 0))
    }
    const answer: DecisionAnswer = {
      outcome: deniedIndex < 0 ? 'allowed' : 'denied', replayed: false, deniedIndex,
      context: cmd.key === undefined ? undefined : { day, tier: 'free' }, current, limits,
    }
    if (cmd.key !== undefined && (cmd.mode === 'consume' || cmd.mode === 'increment')) this.keys[cmd.user]?.set(cmd.key, { fingerprint, answer })
    return answer
  }
}

export async function runModelTest(t: Test, store: CounterStore): Promise<void> {
  let runs = 0
  await fc.assert(
    fc.asyncProperty(fc.array(cmdArb, { minLength: 1, maxLength: 30 }), async (cmds) => {
      runs++
      const users = [newUserId(), newUserId()] as const
      const model = new Model()
      let dayIndex = 0
      for (const cmd of cmds) {
        const now = Date.parse('2026-11-28T12:00:00Z') + dayIndex * 86_400_000
        const day = new Date(now).toISOString().slice(0, 10)
        if (cmd.kind === 'nextDay') {
          dayIndex++
          model.daily = [new Map(), new Map()]
          continue
        }
        if (cmd.kind === 'reset') {
          await store.reset(users[cmd.user], day, now, cmd.metrics)
          for (const m of cmd.metrics) model.set(cmd.user, m, 0)
          continue
        }
        const expected = model.decide(cmd, day)
        const fingerprint = `${cmd.mode}|${cmd.metrics.map(([m, a]) => `${m}=${a}`).join(';')}`
        const actual = await store.decide({
          mode: cmd.mode, userId: users[cmd.user], day, now,
          metrics: cmd.metrics.map(([metric, amount]) => ({ metric, amount, limit: LIMITS[metric] })),
          idempotency: cmd.key === undefined ? undefined : { key: cmd.key, fingerprint, context: { day, tier: 'free' } },
        })
        if (expected.outcome === 'key-reused') {
          if (actual.outcome !== 'key-reused') throw new Error(`expected key-reused for ${JSON.stringify(cmd)}, got ${JSON.stringify(actual)}`)
          continue
        }
        const pick = (a: DecisionAnswer) => ({ outcome: a.outcome, replayed: a.replayed, deniedIndex: a.deniedIndex, current: a.current, limits: a.limits, context: a.context })
        const want = JSON.stringify(pick(expected))
        const got = JSON.stringify(pick(actual))
        if (want !== got) throw new Error(`${JSON.stringify(cmd)} on day ${day}: expected ${want}, got ${got}`)
      }
    }),
    { numRuns: 60 },
  )
  t.equal(runs, 60, 'every generated sequence agreed with the model')
}

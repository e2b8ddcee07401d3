/**
 * Model-based property test: random sequences of consume / increment / refund / reset / check
 * (and a move to the next day) over two users and the four metrics, run against the real engine
 * (Redis + Postgres) and against a few lines of in-memory model of the rules. Every decision and
 * every total must agree, to the micro-unit.
 */
import { deepStrictEqual } from 'node:assert/strict'
import fc from 'fast-check'
import t from 'tap'
import { DAY_MS, utcDay } from '../../src/clock.ts'
import { METRIC_NAMES, METRICS, SCALE } from '../../src/metrics.ts'
import type { MetricName } from '../../src/metrics.ts'
import type { Amounts } from '../../src/usage/types.ts'
import { createUsageHarness, newUserId } from '../helpers/usage.ts'
import { todayNoon } from './fixtures.ts'

const h = await createUsageHarness(t, { now: todayNoon(), commandTimeoutMs: 5000 })

/** Tier free (DESIGN.md 1.6), in micro-units. */
const LIMITS: Record<MetricName, number> = {
  deployments: 10 * SCALE,
  api_calls: 5000 * SCALE,
  compute_hours: 10 * SCALE,
  storage: 5 * SCALE,
}

// Small amounts, so that sequences of 40 commands do reach the limits. All exact in 6 decimals.
const AMOUNT: Record<MetricName, fc.Arbitrary<number>> = {
  deployments: fc.integer({ min: 1, max: 4 }),
  api_calls: fc.constantFrom(1, 7, 250, 999, 1500, 2600),
  compute_hours: fc.constantFrom(0.000001, 0.1, 0.25, 0.7, 1, 2.5, 3.333333),
  storage: fc.constantFrom(0.000001, 0.1, 0.5, 1.25, 2, 3.3),
}

type User = 0 | 1
type Cmd =
  | { kind: 'consume'; user: User; amounts: Amounts }
  | { kind: 'increment'; user: User; metric: MetricName; amount: number }
  | { kind: 'refund'; user: User; amounts: Amounts }
  | { kind: 'reset'; user: User; metric: MetricName | undefined }
  | { kind: 'check'; user: User; metric: MetricName; amount: number }
  | { kind: 'nextDay' }

const userArb = fc.constantFrom<User>(0, 1)
const metricArb = fc.constantFrom(...METRIC_NAMES)
const amountsArb: fc.Arbitrary<Amounts> = fc
  .record(AMOUNT, { requiredKeys: [] })
  .filter((a) => Object.keys(a).length > 0)
const metricAmountArb = metricArb.chain((metric) => AMOUNT[metric].map((amount) => ({ metric, amount })))

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('consume' as const), user: userArb, amounts: amountsArb }) },
  {
    weight: 3,
    arbitrary: fc.tuple(userArb, metricAmountArb, fc.boolean()).map(([user, { metric, amount }, negative]): Cmd => ({
      kind: 'increment', user, metric,
      // Only storage may be decremented (data deleted).
      amount: metric === 'storage' && negative ? -amount : amount,
    })),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('refund' as const), user: userArb, amounts: amountsArb }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('reset' as const), user: userArb, metric: fc.option(metricArb, { nil: undefined }) }),
  },
  {
    weight: 3,
    arbitrary: fc.tuple(userArb, metricAmountArb).map(([user, { metric, amount }]): Cmd => ({ kind: 'check', user, metric, amount })),
  },
  { weight: 1, arbitrary: fc.constant<Cmd>({ kind: 'nextDay' }) },
)

type Totals = Record<MetricName, number>
const micro = (amount: number): number => Math.round(amount * SCALE)
const zero = (): Totals => ({ deployments: 0, api_calls: 0, compute_hours: 0, storage: 0 })
const inOrder = (amounts: Amounts): MetricName[] => METRIC_NAMES.filter((m) => amounts[m] !== undefined)

/** The rules, as plainly as they can be written. */
class Model {
  readonly users: [Totals, Totals] = [zero(), zero()]

  consume(user: User, amounts: Amounts): { allowed: boolean; denied: MetricName | null; before: Totals } {
    const cur = this.users[user]
    const before = { ...cur }
    for (const m of inOrder(amounts)) {
      if (cur[m] + micro(amounts[m] ?? 0) > LIMITS[m]) return { allowed: false, denied: m, before }
    }
    for (const m of inOrder(amounts)) cur[m] += micro(amounts[m] ?? 0)
    return { allowed: true, denied: null, before }
  }

  increment(user: User, metric: MetricName, amount: number): void {
    const cur = this.users[user]
    cur[metric] = Math.max(0, cur[metric] + micro(amount))
  }

  refund(user: User, amounts: Amounts): void {
    const cur = this.users[user]
    for (const m of inOrder(amounts)) cur[m] = Math.max(0, cur[m] - micro(amounts[m] ?? 0))
  }

  reset(user: User, metric: MetricName | undefined): void {
    const cur = this.users[user]
    for (const m of METRIC_NAMES) {
      if (metric === m || (metric === undefined && METRICS[m].period === 'day')) cur[m] = 0
    }
  }

  check(user: User, metric: MetricName, amount: number): boolean {
    return this.users[user][metric] + micro(amount) <= LIMITS[metric]
  }

  nextDay(): void {
    for (const cur of this.users) {
      for (const m of METRIC_NAMES) if (METRICS[m].period === 'day') cur[m] = 0
    }
  }
}

async function engineTotals(userId: string): Promise<Totals> {
  const status = await h.service.status(userId)
  const totals = zero()
  for (const m of METRIC_NAMES) totals[m] = micro(status.metrics[m].current)
  return totals
}

/** How often each kind of outcome happened, to show the generators do reach limits and floors. */
const seen = { consumeAllowed: 0, consumeDenied: 0, checkAllowed: 0, checkDenied: 0, storageFloored: 0, refundFloored: 0 }

async function run(cmds: Cmd[]): Promise<void> {
  const ids = [newUserId(), newUserId()] as const
  const model = new Model()
  for (const [i, cmd] of cmds.entries()) {
    const where = `command ${i} ${JSON.stringify(cmd)}`
    switch (cmd.kind) {
      case 'consume': {
        const expected = model.consume(cmd.user, cmd.amounts)
        seen[expected.allowed ? 'consumeAllowed' : 'consumeDenied']++
        const got = await h.service.consume(ids[cmd.user], cmd.amounts)
        deepStrictEqual({ allowed: got.allowed, denied: got.deniedMetric }, { allowed: expected.allowed, denied: expected.denied }, where)
        // Allowed: the values after the call; denied: the values before it.
        const shown = expected.allowed ? model.users[cmd.user] : expected.before
        for (const m of inOrder(cmd.amounts)) deepStrictEqual(micro(got.metrics[m]?.current ?? -1), shown[m], `${where}: ${m} in the answer`)
        break
      }
      case 'increment': {
        if (model.users[cmd.user][cmd.metric] + micro(cmd.amount) < 0) seen.storageFloored++
        model.increment(cmd.user, cmd.metric, cmd.amount)
        const got = await h.service.incrementUsage(ids[cmd.user], cmd.metric, cmd.amount)
        deepStrictEqual(got.allowed, true, where)
        deepStrictEqual(micro(got.metrics[cmd.metric]?.current ?? -1), model.users[cmd.user][cmd.metric], `${where}: answer`)
        break
      }
      case 'refund':
        if (inOrder(cmd.amounts).some((m) => model.users[cmd.user][m] < micro(cmd.amounts[m] ?? 0))) seen.refundFloored++
        model.refund(cmd.user, cmd.amounts)
        await h.service.refund(ids[cmd.user], cmd.amounts, utcDay(h.clock.now()))
        break
      case 'reset':
        model.reset(cmd.user, cmd.metric)
        await h.admin.reset({ userId: ids[cmd.user], metric: cmd.metric })
        break
      case 'check': {
        const before = { ...model.users[cmd.user] }
        const allowed = model.check(cmd.user, cmd.metric, cmd.amount)
        seen[allowed ? 'checkAllowed' : 'checkDenied']++
        const got = await h.service.checkLimit(ids[cmd.user], cmd.metric, cmd.amount)
        deepStrictEqual({ allowed: got.allowed, current: micro(got.current ?? -1) }, { allowed, current: before[cmd.metric] }, where)
        break
      }
      case 'nextDay':
        model.nextDay()
        h.clock.advance(DAY_MS)
        break
    }
    if (cmd.kind === 'nextDay') {
      for (const u of [0, 1] as const) deepStrictEqual(await engineTotals(ids[u]), model.users[u], `${where}: totals of user ${u}`)
    } else {
      deepStrictEqual(await engineTotals(ids[cmd.user]), model.users[cmd.user], `${where}: totals`)
    }
  }
  for (const u of [0, 1] as const) deepStrictEqual(await engineTotals(ids[u]), model.users[u], `end: totals of user ${u}`)
}

t.test('the engine agrees with the model on random command sequences', async (t) => {
  let commands = 0
  await fc.assert(
    fc.asyncProperty(fc.array(cmdArb, { minLength: 1, maxLength: 40, size: 'max' }), async (cmds) => {
      commands += cmds.length
      await run(cmds)
    }),
    { numRuns: 100 },
  )
  t.ok(commands > 1000, `${commands} commands checked`)
  for (const [outcome, n] of Object.entries(seen)) t.ok(n > 0, `outcome ${outcome} happened ${n} times`)
})

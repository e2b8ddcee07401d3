/**
 * DenyCache on its own, with an injected clock: when a denial answers, when it is only a hint that
 * makes a decision the lead, who may follow a lead, and how a forget makes a lead's answer private.
 */
import t from 'tap'
import { DenyCache } from '../../src/usage/deny-cache.ts'

const KEY = DenyCache.key('u1', '2026-11-28', 'deployments')

function cache(): { denials: DenyCache; clock: { now: number } } {
  const clock = { now: 0 }
  return { denials: new DenyCache({ ttlMs: 1000, now: () => clock.now }), clock }
}

t.test('a denial answers for its second, then is a hint that makes the next decision the lead', async (t) => {
  const { denials, clock } = cache()
  t.equal(denials.coalesce(KEY, 1, 'free', 10), undefined, 'nothing known: no lead, no lookup cost')
  denials.remember('u1', KEY, { tier: 'free', current: 10, limit: 10 })
  t.ok(denials.check(KEY, 1, 'free', 10), 'fresh: answers')
  t.equal(denials.check(KEY, 1, 'pro', 10), undefined, 'another tier')
  t.equal(denials.check(KEY, 1, 'free', 11), undefined, 'another limit')
  clock.now = 1000
  t.equal(denials.check(KEY, 1, 'free', 10), undefined, 'after its second it answers nothing')
  const first = denials.coalesce(KEY, 2, 'free', 10)
  t.ok(first?.led, 'but the next decision leads')
  t.same(denials.coalesce(KEY, 2, 'free', 10), { follow: first?.led }, 'the same amount follows')
  t.same(denials.coalesce(KEY, 5, 'free', 10), { follow: first?.led }, 'a larger amount follows')
  t.equal(denials.coalesce(KEY, 1, 'free', 10), undefined, 'a smaller amount does not')
  t.equal(denials.coalesce(KEY, 2, 'pro', 10), undefined, 'nor another tier')
  t.equal(denials.coalesce(KEY, 2, 'free', null), undefined, 'nor an unlimited metric')

  let released = false
  const waiting = first?.led?.settled().then(() => {
    released = true
  })
  denials.remember('u1', KEY, { tier: 'free', current: 10, limit: 10 }, first?.led)
  denials.end(first?.led as NonNullable<typeof first>['led'] & object)
  await waiting
  t.ok(released, 'followers go on when the lead ends')
  t.ok(denials.check(KEY, 2, 'free', 10), 'and find its denial')
  t.ok(denials.coalesce(KEY, 2, 'free', 10)?.led, 'a new lead after the old one ended')
})

t.test('an admission that left less than its amount is a hint, never an answer', async (t) => {
  const { denials } = cache()
  denials.hint('u1', KEY, { tier: 'free', current: 10, limit: 10 })
  t.equal(denials.check(KEY, 1, 'free', 10), undefined, 'a hint does not deny')
  t.ok(denials.coalesce(KEY, 1, 'free', 10)?.led, 'it makes a lead')
  denials.remember('u2', DenyCache.key('u2', '2026-11-28', 'deployments'), { tier: 'free', current: 10, limit: 10 })
  denials.hint('u2', DenyCache.key('u2', '2026-11-28', 'deployments'), { tier: 'free', current: 9, limit: 10 })
  t.ok(denials.check(DenyCache.key('u2', '2026-11-28', 'deployments'), 1, 'free', 10), 'a hint never replaces a fresh denial')
})

t.test('forgetting a user makes its leads in flight private', async (t) => {
  const { denials } = cache()
  const other = DenyCache.key('u2', '2026-11-28', 'deployments')
  denials.hint('u1', KEY, { tier: 'free', current: 10, limit: 10 })
  denials.hint('u2', other, { tier: 'free', current: 10, limit: 10 })
  const lead = denials.coalesce(KEY, 1, 'free', 10)?.led
  const otherLead = denials.coalesce(other, 1, 'free', 10)?.led
  denials.forget('u1')
  t.equal(lead?.stale, true, "u1's lead is stale")
  t.equal(otherLead?.stale, false, "u2's is not")
  t.equal(denials.coalesce(KEY, 1, 'free', 10), undefined, 'no one follows it, and no new lead without a hint')
  denials.remember('u1', KEY, { tier: 'free', current: 10, limit: 10 }, lead)
  t.equal(denials.check(KEY, 1, 'free', 10), undefined, 'its denial is not remembered')
  denials.forget(null)
  t.equal(otherLead?.stale, true, 'forgetting everyone makes every lead stale')
  t.equal(denials.size, 0)
})

/**
 * WEBHOOK_URL and WEBHOOK_SECRET from the environment reach the delivery worker (DESIGN 1.3,
 * 1.11): a user crossing 80 % and 100 % through HTTP gets two signed POSTs, verified by a receiver
 * on 127.0.0.1.
 */
import t from 'tap'
import { buildTestApp } from '../helpers/app.ts'
import { waitUntil } from '../helpers/net.ts'
import { startReceiver } from '../helpers/webhook-receiver.ts'

const SECRET = 'a-webhook-signing-key-of-at-least-32-bytes'

t.test('the environment configures webhook delivery', async (t) => {
  // Signatures carry the service clock's time: the receiver checks them against the same clock.
  let now = (): number => Date.now()
  const receiver = await startReceiver(SECRET, () => now())
  t.teardown(() => receiver.close())
  const h = await buildTestApp(t, { env: { WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: SECRET } })
  now = () => h.clock.now()
  t.ok(h.app.quota.webhooks, 'the worker runs')
  const u = h.user()
  for (let i = 0; i < 10; i++) {
    await h.app.inject({ method: 'POST', url: '/api/usage/consume', headers: u.headers, payload: { metric: 'deployments' } })
  }
  await h.app.quota.flusher.flushAll()
  await h.app.quota.webhooks?.deliverDue()
  await waitUntil(async () => receiver.events.size >= 2, { what: 'two events delivered', timeoutMs: 10_000, intervalMs: 50 })
  const events = [...receiver.events.values()]
  t.match(events.sort((a, b) => a.threshold - b.threshold), [
    { threshold: 80, user_id: u.id, current: 8, limit: 10 },
    { threshold: 100, user_id: u.id, current: 10, limit: 10 },
  ], 'signed, verified, one per threshold')
  t.ok(receiver.requests.every((r) => r.status === 200), 'every signature checked out')
})

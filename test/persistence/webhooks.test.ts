/**
 * Webhook delivery of threshold events (DESIGN.md 1.11, docs/events.md) against a real receiver on
 * 127.0.0.1 and real Postgres: signed as the contract says (a receiver with another secret refuses
 * it), retried with backoff while the receiver is down and delivered once it is back (once per id
 * at a deduping receiver), carried across an engine closed and started again mid-retry, given up
 * 24 h after the crossing, cut short (and retried later) when the engine stops mid-attempt, and
 * claimed by one replica at a time.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { Test } from 'tap'
import { ManualClock } from '../../src/clock.ts'
import { createQuotaEngine } from '../../src/engine.ts'
import { createPool } from '../../src/db/client.ts'
import type { Pool } from '../../src/db/client.ts'
import { insertEvents } from '../../src/db/usage-events.ts'
import type { EventRow } from '../../src/db/usage-events.ts'
import { listEvents } from '../../src/db/usage-events.ts'
import { WebhookDelivery, retryDelayMs, signWebhook, webhookBody } from '../../src/persistence/webhooks.ts'
import type { WebhookOptions } from '../../src/persistence/webhooks.ts'
import { createTestDatabase } from '../helpers/database.ts'
import type { TestDatabase } from '../helpers/database.ts'
import { startReceiver, verifySignature } from '../helpers/webhook-receiver.ts'
import type { Receiver } from '../helpers/webhook-receiver.ts'

const NOW = '2026-11-28T12:00:00.000Z'
const HOUR = 3_600_000

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

interface Setup {
  db: TestDatabase
  pool: Pool
  clock: ManualClock
  secret: string
  receiver: Receiver
  /** Records `n` events of new users at the clock's time; returns their ids. */
  record(n: number): Promise<number[]>
  events(): Promise<EventRow[]>
  worker(options?: Partial<WebhookOptions>): WebhookDelivery
}

async function setup(tt: Test, db?: TestDatabase): Promise<Setup> {
  const database = db ?? await createTestDatabase(tt)
  const pool = createPool(database.url)
  const clock = new ManualClock(NOW)
  const secret = randomBytes(32).toString('base64url')
  const receiver = await startReceiver(secret, () => clock.now())
  tt.teardown(async () => {
    await receiver.close()
    await pool.end()
  })
  const record = async (n: number): Promise<number[]> => {
    const users = Array.from({ length: n }, () => randomUUID())
    for (const id of users) await pool.query('INSERT INTO users (id, username) VALUES ($1, $2)', [id, id])
    const before = (await listEvents(pool, 0, 10_000)).at(-1)?.id ?? 0
    await insertEvents(pool, users.map((userId) => ({
      userId, metric: 'deployments', day: NOW.slice(0, 10), threshold: 80 as const, current: '8', limit: '10', at: clock.now(),
    })))
    return (await listEvents(pool, before, 10_000)).map((e) => e.id)
  }
  return {
    db: database, pool, clock, secret, receiver, record,
    events: () => listEvents(pool, 0, 10_000),
    worker: (options = {}) => new WebhookDelivery({ pool, url: receiver.url, secret, clock, pollMs: 20, random: () => 0, ...options }),
  }
}

t.test('the signature: t and the hex HMAC-SHA256 of "<t>.<body>"; the body: the contract fields', async (t) => {
  const body = webhookBody({
    id: 7, user_id: 'u', metric: 'compute_hours', date: '2026-11-28', threshold: 80, current: '8.000000', limit: '10', created_at: NOW,
  })
  t.same(JSON.parse(body), {
    id: 7, type: 'usage.threshold', user_id: 'u', metric: 'compute_hours', date: '2026-11-28', threshold: 80, current: 8, limit: 10, created_at: NOW,
  })
  t.equal(signWebhook('k'.repeat(32), 1764331200, '{}'), 't=1764331200,v1=' +
    (await import('node:crypto')).createHmac('sha256', 'k'.repeat(32)).update('1764331200.{}').digest('hex'))
  t.ok(verifySignature('k'.repeat(32), signWebhook('k'.repeat(32), 1000, body), body, 1000 + 299), 'within 5 minutes')
  t.notOk(verifySignature('k'.repeat(32), signWebhook('k'.repeat(32), 1000, body), body, 1000 + 301), 'older: refused')
  t.notOk(verifySignature('x'.repeat(32), signWebhook('k'.repeat(32), 1000, body), body, 1000), 'another secret: refused')
  t.notOk(verifySignature('k'.repeat(32), signWebhook('k'.repeat(32), 1000, body), `${body} `, 1000), 'another body: refused')
})

t.test('backoff: full jitter under base x 2^(n-1), capped', async (t) => {
  t.equal(retryDelayMs(1, 1000, HOUR, () => 0.999), 999)
  t.equal(retryDelayMs(4, 1000, HOUR, () => 0.5), 4000)
  t.equal(retryDelayMs(40, 1000, HOUR, () => 0.5), HOUR / 2, 'capped')
  t.equal(retryDelayMs(3, 1000, HOUR, () => 0), 0)
})

t.test('delivered once, signed, with the contract body; a receiver with another secret refuses it', async (t) => {
  const s = await setup(t)
  const [id] = await s.record(1)
  const worker = s.worker()
  t.equal(await worker.deliverDue(), 1, 'one attempt')
  t.equal(await worker.deliverDue(), 0, 'nothing due after the delivery')
  const got = s.receiver.events.get(id as number)
  t.match(got, { id, type: 'usage.threshold', metric: 'deployments', date: '2026-11-28', threshold: 80, current: 8, limit: 10, created_at: NOW })
  t.match(s.receiver.requests[0]?.signature, new RegExp(`^t=${Math.floor(s.clock.now() / 1000)},v1=[0-9a-f]{64}$`))
  const [row] = await s.events()
  t.match(row, { attempts: 1, delivered_at: NOW, last_error: null, gave_up_at: null })

  const [other] = await s.record(1)
  const wrong = s.worker({ secret: randomBytes(32).toString('hex') })
  await wrong.deliverDue()
  t.notOk(s.receiver.events.has(other as number), 'not accepted')
  t.equal(s.receiver.requests.at(-1)?.status, 401)
  const refused = (await s.events()).find((e) => e.id === other)
  t.match(refused, { attempts: 1, delivered_at: null, last_error: 'HTTP 401', gave_up_at: null })
})

t.test('receiver down for a while: retried, then delivered once per id', async (t) => {
  const s = await setup(t)
  const ids = await s.record(5)
  await s.receiver.down()
  // Retries are due at once here (no jitter, a clock that stands still): a batch takes them all.
  const worker = s.worker({ batch: 10 })
  worker.start()
  t.teardown(() => worker.stop())
  await waitFor('three failed rounds', async () => (await s.events()).every((e) => e.attempts >= 3))
  for (const e of await s.events()) t.match(e.last_error, /ECONNREFUSED/, `event ${e.id}: the connection error is kept`)
  await s.receiver.up()
  // One answer is lost on the way back (a 500), as a flaky receiver would.
  s.receiver.status = 500
  await waitFor('a 500 seen', () => s.receiver.requests.some((r) => r.status === 500))
  s.receiver.status = 200
  await waitFor('every event delivered', async () => (await s.events()).every((e) => e.delivered_at !== null))
  t.same([...s.receiver.events.keys()].sort((a, b) => a - b), ids, 'each id received')
  t.equal(s.receiver.repeats, 0, 'and only once')
  for (const e of await s.events()) t.equal(e.last_error, null)
})

t.test('engine closed and started again mid-retry: the event is still delivered', async (t) => {
  const db = await createTestDatabase(t)
  const s = await setup(t, db)
  const [id] = await s.record(1)
  await s.receiver.down()
  const webhook = { url: s.receiver.url, secret: s.secret, pollMs: 20, random: () => 0 }
  // The whole engine as the service builds it (embedded counters: these events need no store).
  const start = () => createQuotaEngine({
    mode: 'embedded', database: s.pool, databaseUrl: db.url, clock: s.clock, flush: false, scheduler: false, webhook,
  })
  const a = await start()
  await waitFor('two failed attempts', async () => ((await s.events())[0]?.attempts ?? 0) >= 2)
  await a.close()
  const afterClose = (await s.events())[0]
  t.equal(afterClose?.delivered_at, null, 'not delivered while down')
  t.match(afterClose?.last_error, /fetch failed/)
  await s.receiver.up()
  const b = await start()
  t.teardown(() => b.close())
  await waitFor('delivered by the restarted engine', async () => (await s.events())[0]?.delivered_at !== null)
  t.ok(s.receiver.events.has(id as number))
  t.equal(s.receiver.repeats, 0)
})

t.test('given up 24 h after the crossing, with the last error; never tried again', async (t) => {
  const s = await setup(t)
  const [id] = await s.record(1)
  s.receiver.status = 503
  const worker = s.worker({ random: () => 0.5 })
  await worker.deliverDue()
  let [row] = await s.events()
  t.match(row, { attempts: 1, last_error: 'HTTP 503', next_attempt_at: '2026-11-28T12:00:00.500Z' }, 'first retry within base/2')
  t.equal(await worker.deliverDue(), 0, 'not due before its time')
  s.clock.advance(10 * HOUR)
  await worker.deliverDue()
  ;[row] = await s.events()
  t.match(row, { attempts: 2, next_attempt_at: '2026-11-28T22:00:01.000Z' }, 'second retry: base x 2, half of it')
  // Long after: the next attempt is the last one allowed, at most at the deadline.
  s.clock.set('2026-11-29T11:59:59.000Z')
  await worker.deliverDue()
  ;[row] = await s.events()
  t.equal(row?.next_attempt_at, '2026-11-29T12:00:00.000Z', 'capped at 24 h after the crossing')
  s.clock.set('2026-11-29T12:00:00.000Z')
  await worker.deliverDue()
  ;[row] = await s.events()
  t.match(row, { attempts: 4, delivered_at: null, gave_up_at: '2026-11-29T12:00:00.000Z', last_error: 'HTTP 503' })
  s.receiver.status = 200
  s.clock.advance(HOUR)
  t.equal(await worker.deliverDue(), 0, 'never claimed again')
  t.notOk(s.receiver.events.has(id as number))
})

t.test('no answer within the timeout is a failure; stop cuts an attempt short after its grace', async (t) => {
  const s = await setup(t)
  await s.record(1)
  s.receiver.delayMs = 5000
  const timed = s.worker({ timeoutMs: 100 })
  await timed.deliverDue()
  t.match((await s.events())[0], { attempts: 1, last_error: 'no answer within the timeout', delivered_at: null })

  const worker = s.worker({ stopGraceMs: 100 })
  worker.start()
  await waitFor('an attempt under way', () => s.receiver.requests.length >= 2)
  const started = Date.now()
  await worker.stop()
  t.ok(Date.now() - started < 2000, 'stop waited no longer than its grace')
  t.match((await s.events())[0], { attempts: 2, last_error: /cut short/, delivered_at: null, gave_up_at: null })
})

t.test('replicas: concurrent claims never take the same event; each is delivered once', async (t) => {
  const s = await setup(t)
  const ids = await s.record(30)
  const workers = [s.worker({ batch: 3 }), s.worker({ batch: 3 }), s.worker({ batch: 3 })]
  for (let round = 0; round < 20; round++) {
    const counts = await Promise.all(workers.map((w) => w.deliverDue()))
    if (counts.every((n) => n === 0)) break
  }
  t.same([...s.receiver.events.keys()].sort((a, b) => a - b), ids)
  t.equal(s.receiver.repeats, 0, 'no event delivered twice')
  t.ok((await s.events()).every((e) => e.attempts === 1), 'one attempt each')
})

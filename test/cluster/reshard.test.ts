/**
 * Slots resharded under load: `redis-cli --cluster reshard` moves a master's first slots (and the
 * buckets of half the test users with them) to another master while a service process in cluster
 * mode decides for those users. Redis refuses what it cannot run during a slot's move (MOVED,
 * ASK, TRYAGAIN: nothing ran), the client follows or retries, so:
 * - no decision lost or applied twice: after a SIGTERM (final flush) daily_usage per user equals
 *   the requests answered 200, plus at most that user's 503s (a 503 may have been counted), and
 *   equals the user's count in Redis exactly (read afterwards with a fresh cluster client);
 * - no user admitted past the limit;
 * - every answer is a decision (200/429), or a 503 (fail mode closed) only while slots move.
 * A decide.lua call always names keys that do not exist (yesterday's hash, the holds, ...), so
 * while its slot is half-moved Redis answers TRYAGAIN: the client retries, and a slot that takes
 * longer to move than the command timeout allows shows as 503s for its users (counted, figures).
 */
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import calculateSlot from 'cluster-key-slot'
import { Redis } from 'ioredis'
import t from 'tap'
import { BUCKETS, slotOf } from '../../src/counters/redis/keys.ts'
import { mismatches, recordedApiCalls, redisApiCalls } from '../helpers/cluster-totals.ts'
import { createTestDatabase } from '../helpers/database.ts'
import { waitUntil } from '../helpers/net.ts'
import { startRedisCluster } from '../helpers/redis-cluster.ts'
import { startService } from '../helpers/service-process.ts'
import { signToken } from '../helpers/tokens.ts'

const LIMIT = 500
/** Users whose buckets move, and users whose buckets stay where they are. */
const MOVED_USERS = 10
const STAYING_USERS = 10
/** The source master's first slots that move to the target. */
const MOVE_SLOTS = 2000
const LOOPS = 6
/**
 * Keys put into three of the moving buckets' slots before the move, standing in for what a busy
 * bucket holds (idempotency keys live 24 h): those slots take a while to move, so decisions meet
 * them half-moved (ASK, TRYAGAIN), not only moved (MOVED). Outside the service's prefix.
 */
const FILLER_KEYS_PER_SLOT = 10_000

interface Outcome { user: string; status: number; startedAt: number; at: number }

/** Sum of `errorstat_<NAME>:count=` over the nodes' INFO errorstats (error replies they sent). */
async function errorStats(ports: number[]): Promise<Record<string, number>> {
  const totals: Record<string, number> = {}
  for (const port of ports) {
    const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0 })
    client.on('error', () => {})
    try {
      await client.connect()
      const info = await client.info('errorstats')
      for (const [, name, n] of info.matchAll(/^errorstat_(\w+):count=(\d+)/gm)) {
        totals[name as string] = (totals[name as string] ?? 0) + Number(n)
      }
    } catch {
      // a node not answering has no figures to add
    } finally {
      client.disconnect()
    }
  }
  return totals
}

t.test('slots resharded under load: no decision lost or applied twice', async (t) => {
  const testStarted = Date.now()
  const cluster = await startRedisCluster(t)
  const db = await createTestDatabase(t)
  await db.pool.query(`INSERT INTO usage_limits (tier, max_deployments_per_day, max_api_calls_per_day, max_compute_hours_per_day, max_storage_gb)
    VALUES ('reshard', 10, ${LIMIT}, 10, 5)`)

  // The slot map as the cluster made it: the source is the master whose first MOVE_SLOTS slots
  // hold the most buckets; the target is another master.
  const probe = new Redis({ host: '127.0.0.1', port: cluster.nodes[0]?.port as number, lazyConnect: true, maxRetriesPerRequest: 0 })
  probe.on('error', () => {})
  await probe.connect()
  const table = (await probe.cluster('SLOTS')).map(([start, end, master]): [number, number, number] => [start, end, Number(master?.[1])])
  probe.disconnect()
  const bucketSlots = new Map(Array.from({ length: BUCKETS }, (_, b) => [b, calculateSlot(`{${b}}`)]))
  const firstSlots = (port: number): number[] => table.filter(([, , p]) => p === port).sort((a, b) => a[0] - b[0])
    .flatMap(([start, end]) => Array.from({ length: end - start + 1 }, (_, i) => start + i)).slice(0, MOVE_SLOTS)
  const masterPorts = [...new Set(table.map(([, , port]) => port))]
  const movedBuckets = (port: number): number[] => {
    const slots = new Set(firstSlots(port))
    return [...bucketSlots].filter(([, slot]) => slots.has(slot)).map(([b]) => b)
  }
  const sourcePort = masterPorts.reduce((best, port) => (movedBuckets(port).length > movedBuckets(best).length ? port : best))
  const targetPort = masterPorts.find((port) => port !== sourcePort) as number
  const moving = new Set(movedBuckets(sourcePort))
  t.ok(moving.size >= 3, `the move takes ${moving.size} buckets (slots ${[...moving].map((b) => bucketSlots.get(b)).join(', ')})`)

  // Half the users live in buckets that move, half elsewhere (on the source's other slots and
  // on the other masters).
  const movedIds: string[] = []
  const stayingIds: string[] = []
  while (movedIds.length < MOVED_USERS || stayingIds.length < STAYING_USERS) {
    const id = randomUUID()
    const list = moving.has(slotOf(id).bucket) ? movedIds : stayingIds
    if (list.length < (list === movedIds ? MOVED_USERS : STAYING_USERS)) list.push(id)
  }
  const ids = [...movedIds, ...stayingIds]
  const movedSet = new Set(movedIds)
  await db.pool.query("INSERT INTO users (id, username, tier) SELECT u, u::text, 'reshard' FROM unnest($1::uuid[]) AS u", [ids])

  const prefix = `qt:reshard:${process.pid}:`
  const service = await startService(t, {
    DATABASE_URL: db.url, REDIS_URL: undefined, REDIS_CLUSTER_NODES: cluster.env, REDIS_KEY_PREFIX: prefix,
    REDIS_WAIT_REPLICAS: '0', FLUSH_INTERVAL_MS: '200', USAGE_FAIL_MODE: 'closed',
  })
  t.teardown(() => {
    if (!t.passing()) t.comment(`--- service output ---\n${service.output()}`)
  })
  const secret = service.env.JWT_SECRET as string
  const auth = new Map(ids.map((id) => [id, `Bearer ${signToken({ sub: id, secret, expiresIn: '1h' })}`]))

  const outcomes: Outcome[] = []
  const maxRequests = ids.length * (LIMIT + 200)
  let stop = false
  let next = 0
  const loop = async (): Promise<void> => {
    while (!stop && outcomes.length < maxRequests) {
      const user = ids[next++ % ids.length] as string
      const startedAt = Date.now()
      let status: number
      try {
        const res = await fetch(`${service.baseUrl}/api/usage/consume`, {
          method: 'POST', headers: { authorization: auth.get(user) as string, 'content-type': 'application/json' },
          body: '{"metric":"api_calls"}', signal: AbortSignal.timeout(5000),
        })
        await res.arrayBuffer()
        status = res.status
      } catch {
        status = -1
      }
      outcomes.push({ user, status, startedAt, at: Date.now() })
      if (status !== 200 && status !== 429) await sleep(2)
    }
  }
  const loops = Array.from({ length: LOOPS }, () => loop())
  const admittedNow = (): number => outcomes.filter((o) => o.status === 200).length
  await waitUntil(async () => admittedNow() >= ids.length * LIMIT * 0.15,
    { what: '15 % of the quota admitted', timeoutMs: 30_000, intervalMs: 20 })

  const myId = async (port: number): Promise<string> => (await cluster.cli('-p', String(port), 'CLUSTER', 'MYID')).trim()
  const [sourceId, targetId] = [await myId(sourcePort), await myId(targetPort)]
  const countKeys = async (port: number): Promise<number> => {
    let n = 0
    for (const b of moving) n += Number(await cluster.cli('-p', String(port), 'CLUSTER', 'COUNTKEYSINSLOT', String(bucketSlots.get(b))))
    return n
  }
  const filler = new Redis({ host: '127.0.0.1', port: sourcePort, maxRetriesPerRequest: 0 })
  filler.on('error', () => {})
  for (const b of [...moving].slice(0, 3)) {
    const pipeline = filler.pipeline()
    for (let i = 0; i < FILLER_KEYS_PER_SLOT; i++) pipeline.set(`{${b}}:reshard-filler:${i}`, 'x'.repeat(100))
    await pipeline.exec()
  }
  filler.disconnect()
  const keysBefore = await countKeys(sourcePort)
  const statsBefore = await errorStats(cluster.nodes.map((n) => n.port))
  const admittedBefore = admittedNow()
  const moveStart = Date.now()
  let reshardOutput = ''
  let reshardError: Error | undefined
  try {
    reshardOutput = await cluster.cli('--cluster', 'reshard', `127.0.0.1:${sourcePort}`, '--cluster-from', sourceId,
      '--cluster-to', targetId, '--cluster-slots', String(MOVE_SLOTS), '--cluster-yes')
  } catch (err) {
    reshardError = err as Error
  }
  const moveEnd = Date.now()
  const admittedDuring = admittedNow() - admittedBefore
  t.notOk(reshardError, `redis-cli --cluster reshard succeeded${reshardError ? `: ${reshardError.message}` : ''}`)
  await cluster.waitHealthy(30_000)
  const statsAfter = await errorStats(cluster.nodes.map((n) => n.port))
  const delta = (name: string): number => (statsAfter[name] ?? 0) - (statsBefore[name] ?? 0)
  t.ok(delta('MOVED') + delta('ASK') + delta('TRYAGAIN') > 0, 'the service met the move (MOVED, ASK or TRYAGAIN answers)')
  const movedTo = await Promise.all([...moving].map((b) => cluster.masterOf(bucketSlots.get(b) as number)))
  t.ok(movedTo.every((node) => node.port === targetPort), 'the moved buckets are served by the target now')
  // (Not the same number: the service adds and drops keys of those buckets while they move.)
  const [leftBehind, keysAfter] = [await countKeys(sourcePort), await countKeys(targetPort)]
  t.ok(keysBefore > 0 && leftBehind === 0 && keysAfter > 0,
    `the moved buckets' keys are on the target (${keysBefore} on the source before the move; after: ${leftBehind} there, ${keysAfter} on the target)`)

  // Every user reaches the limit after the move.
  const reached = await waitUntil(async () => outcomes.length >= maxRequests || ids.every((id) =>
    outcomes.filter((o) => o.user === id && o.status === 200).length >= LIMIT), { what: 'every user at the limit', timeoutMs: 40_000, intervalMs: 50 })
    .then(() => true, (err: Error) => {
      t.comment(err.message)
      return false
    })
  stop = true
  await Promise.all(loops)
  const finished = Date.now()

  const admitted = new Map<string, number>()
  for (const o of outcomes) if (o.status === 200) admitted.set(o.user, (admitted.get(o.user) ?? 0) + 1)
  t.ok(reached, 'every user reached the limit')
  const over = ids.filter((id) => (admitted.get(id) ?? 0) > LIMIT)
  t.same(over, [], `no user admitted past ${LIMIT}`)
  const errors = outcomes.filter((o) => o.status !== 200 && o.status !== 429)
  t.same([...new Set(errors.map((o) => o.status))].filter((s) => s !== 503), [], 'every answer is 200, 429 or 503')
  const outsideMove = errors.filter((o) => o.startedAt > moveEnd || o.at < moveStart)
  t.same(outsideMove.map((o) => ({ status: o.status, ms: o.at - o.startedAt, afterMove: o.startedAt - moveEnd })), [],
    '503s only for requests made while slots moved')
  const movedDuring = outcomes.filter((o) => movedSet.has(o.user) && o.startedAt <= moveEnd && o.at >= moveStart)

  service.signal('SIGTERM')
  t.same(await service.waitForExit(15_000), { code: 0, signal: null }, 'SIGTERM: final flush, exit 0')
  const { byUser: recorded, userDays } = await recordedApiCalls(db.pool, ids)
  const errorsBy = new Map<string, number>()
  for (const o of errors) errorsBy.set(o.user, (errorsBy.get(o.user) ?? 0) + 1)
  t.same(mismatches(ids, recorded, admitted, errorsBy), [], 'daily_usage per user = its 200s, plus at most its 503s')

  const inRedis = await redisApiCalls(t, cluster, prefix, userDays)
  const differ = ids.filter((id) => (inRedis.get(id) ?? 0) !== (recorded.get(id) ?? 0))
    .map((id) => ({ id, redis: inRedis.get(id) ?? 0, daily_usage: recorded.get(id) ?? 0 }))
  t.same(differ, [], 'daily_usage per user = its count in Redis, exactly')

  const sum = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0)
  const tally = (list: Outcome[]): string => {
    const counts: Record<string, number> = {}
    for (const o of list) counts[o.status] = (counts[o.status] ?? 0) + 1
    return JSON.stringify(counts)
  }
  t.comment(`${outcomes.length} requests (${ids.length} users, limit ${LIMIT}); ${sum(admitted)} admitted, ${errors.length} 503s ` +
    `(${errors.filter((o) => movedSet.has(o.user)).length} for users whose buckets moved)`)
  t.comment(`moved ${MOVE_SLOTS} slots (${moving.size} buckets, ${keysBefore} keys of which ${3 * FILLER_KEYS_PER_SLOT} filler) from :${sourcePort} to :${targetPort} in ` +
    `${((moveEnd - moveStart) / 1000).toFixed(1)} s; ${admittedDuring} admitted meanwhile; requests of moved users during the move: ${tally(movedDuring)}`)
  // (Not ERR: Redis 7.0 answers ERR to the CLIENT SETINFO of every new ioredis connection.)
  t.comment(`error replies the nodes sent during the move: ${['MOVED', 'ASK', 'TRYAGAIN', 'CLUSTERDOWN', 'NOSCRIPT'].map((k) => `${k} ${delta(k)}`).join(', ')}`)
  t.comment(`daily_usage ${sum(recorded)} = Redis ${sum(inRedis)} = admitted ${sum(admitted)} + ${sum(recorded) - sum(admitted)} counted without a 200; ` +
    `load ${((finished - moveStart) / 1000).toFixed(1)} s from the move, test ${((Date.now() - testStarted) / 1000).toFixed(1)} s`)
  if (reshardOutput && !t.passing()) t.comment(`--- reshard output (tail) ---\n${reshardOutput.split('\n').slice(-20).join('\n')}`)
})

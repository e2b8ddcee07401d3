/**
 * A webhook receiver for tests, on 127.0.0.1: it verifies `Quota-Signature` the way docs/events.md
 * tells receivers to (HMAC-SHA256 of "<t>.<body>", compared with timingSafeEqual; `t` within a
 * tolerance of the receiver's clock), answers 401 to a bad signature, and dedupes on `id`. It can
 * be taken down (connections refused) and brought back on the same port, or told what to answer.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import { createServer } from 'node:http'
import type { Server } from 'node:http'
import type { Socket } from 'node:net'

export interface ReceivedEvent {
  id: number
  type: string
  user_id: string
  metric: string
  date: string
  threshold: number
  current: number
  limit: number
  created_at: string
}

/** Whether `header` signs `body` with `secret`, within `toleranceS` of `nowS`. */
export function verifySignature(secret: string, header: string | undefined, body: string, nowS: number, toleranceS = 300): boolean {
  const parts = new Map((header ?? '').split(',').map((p) => p.split('=', 2) as [string, string]))
  const t = Number(parts.get('t'))
  const v1 = parts.get('v1') ?? ''
  if (!Number.isInteger(t) || Math.abs(nowS - t) > toleranceS || !/^[0-9a-f]{64}$/.test(v1)) return false
  const expected = createHmac('sha256', secret).update(`${t}.${body}`).digest()
  return timingSafeEqual(expected, Buffer.from(v1, 'hex'))
}

export interface Receiver {
  readonly url: string
  /** Every request that reached it (signed or not), in order. */
  readonly requests: { status: number; body: string; signature: string | undefined }[]
  /** Verified events by id (a repeat is counted in `repeats`, not added again). */
  readonly events: Map<number, ReceivedEvent>
  repeats: number
  /** What to answer to a verified request. @default 200 */
  status: number
  /** When set, requests are held this long before the answer. */
  delayMs: number
  /** Takes the port down: attempts meet a refused connection. */
  down(): Promise<void>
  /** Listens again on the same port. */
  up(): Promise<void>
  close(): Promise<void>
}

export async function startReceiver(secret: string, now: () => number = Date.now): Promise<Receiver> {
  let server: Server | undefined
  let port = 0
  const sockets = new Set<Socket>()
  const receiver: Receiver = {
    url: '',
    requests: [],
    events: new Map(),
    repeats: 0,
    status: 200,
    delayMs: 0,
    async down() {
      const s = server
      server = undefined
      if (!s) return
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => s.close(() => resolve()))
    },
    async up() {
      const s = createServer((req, res) => {
        const chunks: Buffer[] = []
        req.on('data', (c: Buffer) => chunks.push(c))
        req.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8')
          const signature = req.headers['quota-signature'] as string | undefined
          const ok = verifySignature(secret, signature, body, Math.floor(now() / 1000))
          const status = ok ? receiver.status : 401
          receiver.requests.push({ status, body, signature })
          if (ok && status >= 200 && status < 300) {
            const event = JSON.parse(body) as ReceivedEvent
            if (receiver.events.has(event.id)) receiver.repeats++
            else receiver.events.set(event.id, event)
          }
          const answer = (): void => {
            res.writeHead(status, { 'content-type': 'text/plain' }).end(ok ? 'ok' : 'bad signature')
          }
          if (receiver.delayMs > 0) setTimeout(answer, receiver.delayMs).unref()
          else answer()
        })
      })
      s.on('connection', (socket) => {
        sockets.add(socket)
        socket.on('close', () => sockets.delete(socket))
      })
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject)
        s.listen(port, '127.0.0.1', () => resolve())
      })
      const address = s.address()
      if (address && typeof address === 'object') port = address.port
      server = s
      ;(receiver as { url: string }).url = `http://127.0.0.1:${port}/hooks/quota`
    },
    close() {
      return receiver.down()
    },
  }
  await receiver.up()
  return receiver
}

/**
 * Raw HTTP/1.1 over a net.Socket, for what `inject` cannot reach: Node's HTTP parser, its
 * timeouts and the closing server. Not a test file (tap runs *.test.ts).
 */
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'

/** Listens on 127.0.0.1, a port the kernel picks; returns the port. */
export async function listen(app: FastifyInstance): Promise<number> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

export interface RawExchange {
  /** Everything received, as text. */
  raw: string
  /** The server closed the connection. */
  closed: boolean
  /** Milliseconds from the connection to the end of the exchange. */
  elapsedMs: number
}

export interface ParsedResponse {
  statusCode: number
  headers: Record<string, string>
  body: string
}

export type RawResponse = RawExchange & ParsedResponse

export function parseResponse(raw: string): ParsedResponse {
  const end = raw.indexOf('\r\n\r\n')
  if (end < 0) throw new Error(`no complete response head in ${JSON.stringify(raw.slice(0, 200))}`)
  const [statusLine = '', ...lines] = raw.slice(0, end).split('\r\n')
  const statusCode = Number(/^HTTP\/1\.1 (\d{3}) /.exec(statusLine)?.[1] ?? NaN)
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  return { statusCode, headers, body: raw.slice(end + 4) }
}

export interface ExchangeOptions {
  /** Give up (and report `closed: false`, whatever arrived) after this long. @default 5000 */
  timeoutMs?: number
  /** Called once connected, with the socket, to write more later (e.g. after app.close()). */
  afterConnect?: (socket: Socket) => void | Promise<void>
}

/**
 * Connects, writes `data`, and collects what the server sends until it closes the connection or
 * `timeoutMs` passes. Nothing is parsed here: a test looks at `raw` or calls parseResponse.
 */
export function exchange(port: number, data: string | Buffer, options: ExchangeOptions = {}): Promise<RawExchange> {
  const started = Date.now()
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' })
    const chunks: Buffer[] = []
    let done = false
    const finish = (closed: boolean): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      resolve({ raw: Buffer.concat(chunks).toString('utf8'), closed, elapsedMs: Date.now() - started })
    }
    const timer = setTimeout(() => finish(false), options.timeoutMs ?? 5000)
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('end', () => finish(true))
    socket.on('close', () => finish(true))
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A reset after the answer arrived is a close; before it, a failure.
      if (chunks.length > 0 || err.code === 'ECONNRESET') finish(true)
      else if (!done) {
        done = true
        clearTimeout(timer)
        reject(err)
      }
    })
    socket.on('connect', () => {
      socket.write(data)
      void Promise.resolve(options.afterConnect?.(socket)).catch(reject)
    })
  })
}

/** `exchange` and the parsed response (fails when no complete response head arrived). */
export async function request(port: number, data: string | Buffer, options: ExchangeOptions = {}): Promise<RawResponse> {
  const result = await exchange(port, data, options)
  return { ...result, ...parseResponse(result.raw) }
}

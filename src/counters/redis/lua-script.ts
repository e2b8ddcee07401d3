/**
 * Every Lua script loads one way: read from `scripts/<name>.lua` next to this file, sent as
 * EVALSHA, and loaded with SCRIPT LOAD only when Redis answers NOSCRIPT (after a restart, a
 * SCRIPT FLUSH or a failover). A NOSCRIPT call ran nothing, so sending it again cannot apply
 * anything twice. (ioredis' defineCommand would do the same for single calls, but inside a
 * pipeline it sends full EVAL bodies; the batcher pipelines decide.lua.)
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { ChainableCommander } from 'ioredis'
import { loadScript } from './client.ts'
import type { RedisClient } from './client.ts'
import { classify, isNoScript } from './errors.ts'

export type ScriptArgument = string | number

export class LuaScript {
  readonly sha: string

  constructor(
    readonly name: string,
    readonly source: string,
  ) {
    this.sha = createHash('sha1').update(source).digest('hex')
  }

  /**
   * The script `scripts/<name>.lua`, followed by `scripts/<part>.lua` for each of `parts`: one
   * script kept in several files (they share one chunk, so later parts see the earlier locals).
   */
  static fromFile(name: string, ...parts: string[]): LuaScript {
    const read = (file: string): string => readFileSync(new URL(`./scripts/${file}.lua`, import.meta.url), 'utf8')
    return new LuaScript(name, [name, ...parts].map(read).join('\n'))
  }

  /** One call; Redis failures come back classified (CounterUnavailableError when transient). */
  async run(redis: RedisClient, keys: readonly string[], args: readonly ScriptArgument[]): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args)
    } catch (err) {
      if (!isNoScript(err)) throw classify(err)
    }
    try {
      await this.load(redis)
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args)
    } catch (err) {
      throw classify(err)
    }
  }

  /** Queues a call on a pipeline (the caller handles NOSCRIPT replies, see ScriptBatcher). */
  queue(pipeline: ChainableCommander, numKeys: number, keysThenArgs: readonly ScriptArgument[]): void {
    pipeline.evalsha(this.sha, numKeys, ...keysThenArgs)
  }

  /** Loads the script (on a cluster, into every master: see loadScript). */
  async load(redis: RedisClient): Promise<void> {
    await loadScript(redis, this.source)
  }
}

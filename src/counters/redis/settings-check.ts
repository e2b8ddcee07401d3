/**
 * Start-up checks of the Redis server's settings that can silently break the invariants: an
 * eviction policy may drop a counter (a fresh quota), and no persistence widens what a restart
 * loses to the last flush interval. Managed Redis often refuses CONFIG GET; then we say so.
 */
import { isCluster, servingMasters } from './client.ts'
import type { RedisClient } from './client.ts'
import type { Logger } from 'pino'

export interface RedisSettings {
  maxmemoryPolicy: string | null
  appendonly: string | null
  /** RDB snapshot rules ("" = none). */
  save: string | null
}

/**
 * What a Redis restart loses, from its settings: `none` with AOF (appendfsync everysec: at most
 * about one second of writes), `snapshot` with RDB only (everything since the last snapshot),
 * `everything` with neither, `unknown` when CONFIG GET is refused (managed Redis).
 */
export function restartLoses(settings: RedisSettings): 'none' | 'snapshot' | 'everything' | 'unknown' {
  if (settings.appendonly === 'yes') return 'none'
  if (settings.appendonly === null || settings.save === null) return 'unknown'
  return settings.save.trim() === '' ? 'everything' : 'snapshot'
}

/** On a cluster, the settings of its first master (every node should be configured alike). */
export async function readRedisSettings(client: RedisClient): Promise<RedisSettings> {
  const redis = isCluster(client) ? (servingMasters(client)[0] ?? client) : client
  const get = async (name: string): Promise<string | null> => {
    try {
      const reply = (await redis.config('GET', name)) as unknown
      // RESP2 shape: [name, value]; RESP3 map mapping: { name: value }.
      if (Array.isArray(reply)) return (reply[1] as string | undefined) ?? null
      if (reply && typeof reply === 'object') return (reply as Record<string, string>)[name] ?? null
      return null
    } catch {
      return null
    }
  }
  return { maxmemoryPolicy: await get('maxmemory-policy'), appendonly: await get('appendonly'), save: await get('save') }
}

export async function warnAboutRedisDurability(redis: RedisClient, logger?: Pick<Logger, 'warn'>): Promise<RedisSettings> {
  const settings = await readRedisSettings(redis)
  if (settings.maxmemoryPolicy === null) {
    logger?.warn('cannot read Redis maxmemory-policy (CONFIG GET refused): make sure it is noeviction')
  } else if (settings.maxmemoryPolicy !== 'noeviction') {
    logger?.warn(
      { maxmemoryPolicy: settings.maxmemoryPolicy },
      'Redis maxmemory-policy can evict keys: an evicted counter is rebuilt from Postgres only up to the last flush; set maxmemory-policy noeviction',
    )
  }
  if (settings.appendonly === 'no') {
    logger?.warn('Redis has no AOF (appendonly no): a Redis restart loses the changes of the last flush interval; use appendonly yes, appendfsync everysec')
  }
  return settings
}

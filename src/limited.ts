/**
 * Runs `fn` over `items` with at most `limit` calls in flight, keeping the results in order.
 * The flusher's Redis scripts go out this way: Redis runs one client's pipelined scripts back to
 * back, so 64 bucket reads sent at once would hold every decision behind all of them; a few at
 * a time lets decisions in between.
 */
export async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      results[i] = await fn(items[i] as T)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return results
}

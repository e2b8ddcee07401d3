/**
 * Runs `fn` over `items` with at most `limit` calls in flight, keeping the results in order.
 * The flusher's Redis scripts go out this way: Redis runs one client's pipelined scripts back to
 * back, so 64 bucket reads sent at once would hold every decision behind all of them; a few at
 * a time lets decisions in between. After a failure no new call starts, and the first error is
 * thrown once the calls in flight are done: nothing outlives the caller's await.
 */
export async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length)
  let next = 0
  let failure: { error: unknown } | undefined
  const worker = async (): Promise<void> => {
    while (next < items.length && !failure) {
      const i = next++
      try {
        results[i] = await fn(items[i] as T)
      } catch (error) {
        failure ??= { error }
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  if (failure) throw failure.error
  return results
}

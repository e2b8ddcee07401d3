/**
 * A binary min-heap of things that expire, ordered by `at` (ms). The memory store pushes each
 * day state and idempotency record once, when it is created, and pops what is due a few at a
 * time, so forgetting expired state never needs a scan of every user. A push costs O(log n)
 * comparisons at worst and about one when pushes come in time order, as they mostly do.
 *
 * `at` must not change while an item is queued: something whose expiry moves (the storage gauge)
 * is queued with its expiry at the time and re-queued when it turns out to have been renewed.
 */
export interface Expiring {
  at: number
}

export class ExpiryQueue<T extends Expiring> {
  #items: T[] = []

  get size(): number {
    return this.#items.length
  }

  /** The item that expires first, without taking it off. */
  peek(): T | undefined {
    return this.#items[0]
  }

  push(item: T): void {
    const items = this.#items
    let i = items.length
    items.push(item)
    while (i > 0) {
      const parent = (i - 1) >> 1
      const above = items[parent] as T
      if (above.at <= item.at) break
      items[i] = above
      i = parent
    }
    items[i] = item
  }

  pop(): T | undefined {
    const items = this.#items
    const top = items[0]
    const last = items.pop()
    if (top === undefined || last === undefined || items.length === 0) return top
    const n = items.length
    let i = 0
    for (;;) {
      const left = 2 * i + 1
      if (left >= n) break
      const right = left + 1
      let child = left
      if (right < n && (items[right] as T).at < (items[left] as T).at) child = right
      const below = items[child] as T
      if (below.at >= last.at) break
      items[i] = below
      i = child
    }
    items[i] = last
    return top
  }

  clear(): void {
    this.#items = []
  }
}

/**
 * The conformance suite against the in-process store (embedded mode). The history is a plain
 * map the loader reads; losing state clears every map the store holds, as a process restart does.
 */
import t from 'tap'
import { MemoryCounterStore } from '../../../src/counters/memory/memory-store.ts'
import type { SeedState } from '../../../src/counters/store.ts'
import { emptyCounts, runConformance } from './suite.ts'

runConformance(t, 'memory', async (t) => {
  const history = new Map<string, SeedState>()
  const store = new MemoryCounterStore({
    loader: async (userId, day) => history.get(`${userId}:${day}`) ?? { counts: emptyCounts(), version: 0, gauge: 0 },
  })
  await store.start()
  t.teardown(() => store.close())
  return { store, history, loseState: async () => store.clear() }
})

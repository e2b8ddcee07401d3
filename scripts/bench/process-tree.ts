/**
 * CPU and memory of a server's whole process tree, from /proc (Linux): the variant's process and
 * everything it started, so a limiter that spawns helpers cannot hide their cost. Threads (libuv's
 * pool, tsx's loader worker, PGlite's WebAssembly) are inside their process's figures already.
 */
import { readFileSync, readdirSync } from 'node:fs'

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ: 100 on every Linux Node supports). */
const TICKS_PER_S = 100

interface ProcStat {
  ppid: number
  /** utime + stime of the process, plus cutime + cstime: its children that ended and were waited for. */
  cpuTicks: number
}

function readStat(pid: number): ProcStat | undefined {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined // ended between the listing and the read
  }
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const field = (n: number): number => Number(fields[n - 3])
  return { ppid: field(4), cpuTicks: field(14) + field(15) + field(16) + field(17) }
}

/** `pid` and all its living descendants. */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>()
  for (const entry of readdirSync('/proc')) {
    const child = Number(entry)
    if (!Number.isInteger(child)) continue
    const stat = readStat(child)
    if (!stat) continue
    const siblings = children.get(stat.ppid)
    if (siblings) siblings.push(child)
    else children.set(stat.ppid, [child])
  }
  const tree = [pid]
  for (let i = 0; i < tree.length; i++) tree.push(...(children.get(tree[i] as number) ?? []))
  return tree
}

/**
 * CPU seconds (user + system) the tree has used so far. A descendant that ended is still counted
 * once its parent has waited for it (its time moves into the parent's cutime/cstime).
 */
export function treeCpuSeconds(pid: number): number {
  let ticks = 0
  for (const p of processTree(pid)) ticks += readStat(p)?.cpuTicks ?? 0
  return ticks / TICKS_PER_S
}

/** Resident memory of the tree now, bytes (the sum of each process's VmRSS). */
export function treeRssBytes(pid: number): number {
  let kib = 0
  for (const p of processTree(pid)) {
    try {
      kib += Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0)
    } catch {
      // ended between the listing and the read
    }
  }
  return kib * 1024
}

/**
 * Samples the tree's RSS every `everyMs` until stopped; stop() returns the highest sample (the
 * memory the variant needs under this load). Listing /proc costs the bench process a few hundred
 * µs per sample, outside the measured server.
 */
export function sampleTreeRss(pid: number, everyMs = 250): { stop(): number } {
  let max = treeRssBytes(pid)
  const timer = setInterval(() => {
    max = Math.max(max, treeRssBytes(pid))
  }, everyMs)
  return {
    stop() {
      clearInterval(timer)
      return Math.max(max, treeRssBytes(pid))
    },
  }
}

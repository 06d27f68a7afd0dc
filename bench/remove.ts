/**
 * P1: removing a chroot copy of 200,000 files of 64 B in 2,000 directories, on tmpfs and on
 * ext4 (an image on the real disk, remounted before each removal: a purge meets a cold chroot),
 * against `rm -r --one-file-system` on an identical tree, in the same run.
 *
 * Per round, identical trees are built (one per contender) and removed in a rotating order, so
 * that no contender always runs first or last; the table gives the median of the rounds, the
 * rate and the ratio to rm's median. The contenders:
 *   - rm -r --one-file-system
 *   - build-cleaner purge, the whole CLI as an admin runs it (node start, config, snapshot,
 *     lock, user re-scan, unmount step, then the parallel walk), at the default --jobs, at
 *     --jobs 4 and at --jobs 1 (the walk in one process)
 *   - removeTreeParallel alone, called as execute.ts calls it, with its helper forked on demand
 *     (the walk without the CLI around it)
 * Below the table, the fixed costs measured in the same run: `node -e 0` and a purge of an
 * empty copy, what any purge pays before its first unlink.
 */
import * as fs from 'node:fs'
import { assertPrivateNamespace, benchLoopFs, benchTmpfs, countEntries, fmtMs, fmtRate, hostRootMount, makeTree, median, parallelCapacity, purgeCommand, removerDriver, sh, table, timeCommand, type Scratch } from './util.js'
import { defaultJobs } from '../src/jobs.js'

export interface RemoveBenchOptions {
  readonly fs: 'tmpfs' | 'ext4'
  readonly files: number
  readonly dirs: number
  readonly rounds: number
}

const CONTENDERS = ['rm -r --one-file-system', 'build-cleaner purge', 'build-cleaner purge --jobs 4', 'build-cleaner purge --jobs 1', 'removeTreeParallel (driver)'] as const
type Contender = (typeof CONTENDERS)[number]

export function benchRemove(opts: RemoveBenchOptions): string {
  assertPrivateNamespace()
  const scratch: Scratch = opts.fs === 'tmpfs' ? benchTmpfs('bc-bench-rm-', '12g') : benchLoopFs('ext4', 16, 'bc-bench-ext4-')
  const times = new Map<Contender, number[]>(CONTENDERS.map((c) => [c, []]))
  let entries = 0
  try {
    const br = `${scratch.dir}/archbuild`
    const group = `${br}/extra-x86_64`
    fs.mkdirSync(`${group}/root`, { recursive: true })
    for (let round = 0; round < opts.rounds; round++) {
      const trees = new Map<Contender, string>(CONTENDERS.map((c, i) => [c, `${group}/copy${round}-${i}`]))
      for (const tree of trees.values()) makeTree(tree, opts.files, opts.dirs)
      entries = countEntries(trees.get(CONTENDERS[0])!)
      sh(`sync -f '${scratch.dir}'`)
      scratch.remount()
      const order = CONTENDERS.map((_, i) => CONTENDERS[(i + round) % CONTENDERS.length]!)
      for (const who of order) {
        const tree = trees.get(who)!
        const jobs = /--jobs (\d+)/.exec(who)?.[1]
        const argv =
          who === 'rm -r --one-file-system' ? ['rm', '-r', '--one-file-system', tree]
          : who.startsWith('build-cleaner purge') ? [...purgeCommand(br, tree, `${scratch.dir}/run.lock`), ...(jobs ? ['--jobs', jobs] : [])]
          : removerDriver(tree, 'removeTreeParallel')
        const t = timeCommand(argv)
        if (t.status !== 0 || fs.existsSync(tree)) throw new Error(`${who} failed on ${tree} (status ${t.status}): ${t.stderr.slice(0, 1000)}`)
        times.get(who)!.push(t.ms)
        sh(`sync -f '${scratch.dir}'`) // its deferred writes are not the next one's cost
      }
    }
    const fixed = fixedCosts(br, `${scratch.dir}/run.lock`)
    const rm = median(times.get('rm -r --one-file-system')!)
    const rows = CONTENDERS.map((who) => {
      const ts = times.get(who)!
      const m = median(ts)
      return [who, fmtMs(m), fmtRate(entries, m), (m / rm).toFixed(2), ts.map(fmtMs).join(' ')]
    })
    return [
      `${entries.toLocaleString('en')} entries (${opts.files.toLocaleString('en')} files of 64 B, ${opts.dirs.toLocaleString('en')} leaf dirs) per tree, ${opts.rounds} rounds, rotating order`,
      `filesystem: ${scratch.note}`,
      parallelCapacity(),
      ...(opts.fs === 'ext4' ? [`host root filesystem (for comparison): ${hostRootMount()}`] : []),
      '',
      table(['contender', 'median', 'rate', 'vs rm', 'rounds'], rows),
      `(build-cleaner purge: --jobs ${defaultJobs()} by default here)`,
      `fixed costs, medians of 5: node -e 0 ${fmtMs(fixed.node)}; build-cleaner purge of an empty copy ${fmtMs(fixed.purge)} (${((fixed.purge / rm) * 100).toFixed(0)}% of rm's median above)`,
    ].join('\n')
  } finally {
    scratch.cleanup()
  }
}

/** What every purge pays before its first unlink: node's own start, and a purge of an empty copy. */
function fixedCosts(buildRoot: string, runLock: string): { node: number; purge: number } {
  const node: number[] = []
  const purge: number[] = []
  const empty = `${buildRoot}/extra-x86_64/empty`
  for (let i = 0; i < 5; i++) {
    node.push(timeCommand(['node', '-e', '0']).ms)
    fs.mkdirSync(empty)
    const t = timeCommand(purgeCommand(buildRoot, empty, runLock))
    if (t.status !== 0 || fs.existsSync(empty)) throw new Error(`purge of an empty copy failed (status ${t.status}): ${t.stderr.slice(0, 1000)}`)
    purge.push(t.ms)
  }
  return { node: median(node), purge: median(purge) }
}

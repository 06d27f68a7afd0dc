/**
 * P2: purging a chroot copy that is a btrfs subvolume (devtools makes them with
 * `btrfs subvolume snapshot`) must cost ~1 s whatever its size: it is one subvolume delete,
 * not a walk. Timed per round on an image on the real disk, remounted first (cold):
 *   - build-cleaner purge of a subvolume copy (the whole command)
 *   - `btrfs subvolume delete` of an identical subvolume alone (the floor)
 *   - `rm -r --one-file-system` of an identical plain-directory copy (what a walk costs)
 * at two sizes, to show the purge does not grow with the number of files.
 */
import * as fs from 'node:fs'
import { assertPrivateNamespace, benchLoopFs, countEntries, fmtMs, makeTree, median, purgeCommand, sh, table, timeCommand } from './util.js'

export interface BtrfsBenchOptions {
  readonly sizes: readonly number[]
  readonly rounds: number
}

const CONTENDERS = ['build-cleaner purge (subvolume)', 'btrfs subvolume delete', 'rm -r --one-file-system (plain dir)'] as const
type Contender = (typeof CONTENDERS)[number]

export function benchBtrfs(opts: BtrfsBenchOptions): string {
  assertPrivateNamespace()
  const scratch = benchLoopFs('btrfs', 8, 'bc-bench-btrfs-')
  const rows: string[][] = []
  try {
    const br = `${scratch.dir}/archbuild`
    const group = `${br}/extra-x86_64`
    fs.mkdirSync(group, { recursive: true })
    sh(`btrfs -q subvolume create '${group}/root'`)
    for (const files of opts.sizes) {
      const dirs = Math.max(1, Math.round(files / 100))
      const times = new Map<Contender, number[]>(CONTENDERS.map((c) => [c, []]))
      let entries = 0
      for (let round = 0; round < opts.rounds; round++) {
        const trees = new Map<Contender, string>(CONTENDERS.map((c, i) => [c, `${group}/copy${files}-${round}-${i}`]))
        for (const [who, tree] of trees) {
          if (who !== 'rm -r --one-file-system (plain dir)') sh(`btrfs -q subvolume create '${tree}'`)
          makeTree(tree, files, dirs)
        }
        entries = countEntries(trees.get(CONTENDERS[2])!)
        scratch.remount()
        for (let i = 0; i < CONTENDERS.length; i++) {
          const who = CONTENDERS[(i + round) % CONTENDERS.length]!
          const tree = trees.get(who)!
          const argv =
            who === 'build-cleaner purge (subvolume)' ? purgeCommand(br, tree, `${scratch.dir}/run.lock`)
            : who === 'btrfs subvolume delete' ? ['btrfs', '-q', 'subvolume', 'delete', tree]
            : ['rm', '-r', '--one-file-system', tree]
          const t = timeCommand(argv)
          if (t.status !== 0 || fs.existsSync(tree)) throw new Error(`${who} failed on ${tree} (status ${t.status}): ${t.stderr.slice(0, 1000)}`)
          times.get(who)!.push(t.ms)
          // Wait for the cleaner: its background work is not the next contender's cost. It runs
          // after a commit, every 30 s by default: commit=1 only while waiting, not while timing.
          sh(`mount -o remount,commit=1 '${scratch.dir}'; btrfs subvolume sync '${scratch.dir}' >/dev/null; mount -o remount,commit=30 '${scratch.dir}'; sync -f '${scratch.dir}'`)
        }
      }
      const floor = median(times.get('btrfs subvolume delete')!)
      for (const who of CONTENDERS) {
        const ts = times.get(who)!
        rows.push([entries.toLocaleString('en'), who, fmtMs(median(ts)), (median(ts) / floor).toFixed(1), ts.map(fmtMs).join(' ')])
      }
    }
    return [`filesystem: ${scratch.note}; ${opts.rounds} rounds per size, rotating order`, '', table(['entries', 'contender', 'median', 'vs delete', 'rounds'], rows)].join('\n')
  } finally {
    scratch.cleanup()
  }
}

/**
 * P4: peak memory while `build-cleaner purge` removes 1,000,000 files (200,000 with --small) on
 * tmpfs. The walk streams (two fds and one listing buffer per level of depth, never the tree in
 * memory), so memory stays flat however big the tree. Measured at the default --jobs (the
 * helper processes are charged too: the peak sums over the whole process tree) and at --jobs 1.
 */
import * as fs from 'node:fs'
import { assertPrivateNamespace, benchTmpfs, countEntries, fmtMs, fmtRate, makeTree, peakRss, purgeCommand, table } from './util.js'
import { defaultJobs } from '../src/jobs.js'

export interface RssBenchOptions {
  readonly files: number
}

const MiB = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`

export async function benchRss(opts: RssBenchOptions): Promise<string> {
  assertPrivateNamespace()
  const scratch = benchTmpfs('bc-bench-rss-', '16g')
  const rows: string[][] = []
  let entries = 0
  try {
    const br = `${scratch.dir}/archbuild`
    const dirs = Math.round(opts.files / 100)
    for (const jobs of [defaultJobs(), 1]) {
      const tree = `${br}/extra-x86_64/copy-j${jobs}`
      makeTree(tree, opts.files, dirs)
      entries = countEntries(tree)
      const m = await peakRss([...purgeCommand(br, tree, `${scratch.dir}/run.lock`), '--jobs', String(jobs)])
      if (m.status !== 0 || fs.existsSync(tree)) throw new Error(`purge --jobs ${jobs} failed (status ${m.status}): ${m.stderr}`)
      rows.push([`build-cleaner purge --jobs ${jobs}`, MiB(m.ownHwmKiB), MiB(m.rssKiB), MiB(m.groupKiB), String(m.processes), fmtMs(m.ms), fmtRate(entries, m.ms)])
    }
    return [
      `${entries.toLocaleString('en')} entries (${opts.files.toLocaleString('en')} files in ${dirs.toLocaleString('en')} dirs) on ${scratch.note}; target ≤ 100 MiB`,
      '',
      table(['command', 'own VmHWM', 'peak Σ RSS', 'peak, shared once', 'processes', 'time', 'rate'], rows),
      '(Σ RSS counts the node binary, ~34 MB of text shared by every node process, once per process;',
      ' "shared once" is Σ private + the largest shared: the memory the processes hold together;',
      ' `flock` children are counted while they live)',
    ].join('\n')
  } finally {
    scratch.cleanup()
  }
}

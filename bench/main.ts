/**
 * `npm run bench [-- --only NAME]... [-- --small] [-- --reps N]`: builds its own fixtures inside
 * a private mount namespace (scripts/bench.mjs arranges it), runs each benchmark (all of them
 * unless --only names some: dry-run, remove-tmpfs, remove-ext4, btrfs, rss), and prints tables
 * of medians and ratios against the standard tool measured in the same run. Full run ~8 min,
 * --small ~2 min; the ext4 and btrfs images live in /var/tmp and are removed afterwards.
 */
import { parseArgs } from 'node:util'
import { machineLine } from './util.js'
import { benchDryRun } from './dry-run.js'
import { benchRemove } from './remove.js'
import { benchBtrfs } from './btrfs.js'
import { benchRss } from './rss.js'

const { values } = parseArgs({
  options: { only: { type: 'string', multiple: true }, small: { type: 'boolean' }, reps: { type: 'string' } },
})
const small = values.small ?? false
const reps = Number(values.reps ?? (small ? 3 : 5))
const files = small ? 50_000 : 200_000

const benches: Record<string, () => string | Promise<string>> = {
  'dry-run': () => benchDryRun({ scales: small ? [1, 2] : [1, 2, 4], reps }),
  // P1: 200,000 files in 2,000 dirs (--small: 50,000 in 500); an ext4 round costs ~40 s, so 3 (--small: 2).
  'remove-tmpfs': () => benchRemove({ fs: 'tmpfs', files, dirs: files / 100, rounds: reps }),
  'remove-ext4': () => benchRemove({ fs: 'ext4', files, dirs: files / 100, rounds: small ? 2 : 3 }),
  // P2: a btrfs subvolume copy of 50,000 files and one of 5,000: the size must not matter (--small: 20,000).
  btrfs: () => benchBtrfs({ sizes: small ? [20_000] : [5_000, 50_000], rounds: 3 }),
  // P4: peak RSS removing 1,000,000 files (--small: 200,000).
  rss: () => benchRss({ files: small ? 200_000 : 1_000_000 }),
}
const selected = new Set(values.only ?? Object.keys(benches))
for (const name of selected) if (!benches[name]) throw new Error(`unknown benchmark ${name}: one of ${Object.keys(benches).join(', ')}`)

console.log(machineLine())
for (const [name, run] of Object.entries(benches)) {
  if (!selected.has(name)) continue
  const t0 = performance.now()
  const out = await run()
  console.log(`\n## ${name} (${((performance.now() - t0) / 1000).toFixed(0)} s)\n${out}`)
}

/**
 * `npm run bench [-- --only NAME] [-- --small]`: builds its own fixtures inside a private
 * mount namespace (scripts/bench.mjs arranges it), runs each benchmark, and prints tables of
 * medians and ratios against the standard tool measured in the same run.
 */
import { parseArgs } from 'node:util'
import { machineLine } from './util.js'
import { benchDryRun } from './dry-run.js'

const { values } = parseArgs({
  options: { only: { type: 'string', multiple: true }, small: { type: 'boolean' }, reps: { type: 'string' } },
})
const small = values.small ?? false
const reps = Number(values.reps ?? (small ? 3 : 5))
const selected = new Set(values.only ?? ['dry-run'])

const benches: Record<string, () => string> = {
  'dry-run': () => benchDryRun({ scales: small ? [1, 2] : [1, 2, 4], reps }),
}
for (const name of selected) if (!benches[name]) throw new Error(`unknown benchmark ${name}: one of ${Object.keys(benches).join(', ')}`)

console.log(machineLine())
for (const [name, run] of Object.entries(benches)) {
  if (!selected.has(name)) continue
  console.log(`\n## ${name}\n${run()}`)
}

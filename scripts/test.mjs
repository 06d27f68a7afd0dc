#!/usr/bin/env node
// The one test command (`npm test`), used by developers and by .ci/run alike.
// 1. type-check and compile src/ + test/ with tsc into build/ (uvu's TypeScript loaders are
//    unreliable on Node 20, KERNEL-NOTES), 2. run the pure unit tests, 3. run the root tests
//    inside a private mount namespace (`unshare -m --propagation private`) so their real
//    mounts never reach the host. Root tests are never skipped: without root or unshare the
//    run fails and says why.
import { spawnSync } from 'node:child_process'
import { rmSync } from 'node:fs'

const uvu = ['node_modules/uvu/bin.js']
const only = process.argv[2] // optional file pattern, e.g. `npm test -- mountinfo`

function step(title, cmd, args) {
  process.stdout.write(`\n== ${title}\n`)
  const env = { ...process.env, NO_COLOR: '1' }
  delete env.FORCE_COLOR
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, maxBuffer: 256 << 20 })
  process.stdout.write(r.stdout ?? '')
  process.stderr.write(r.stderr ?? '')
  if (r.error) process.stderr.write(`${cmd}: ${r.error.message}\n`)
  return { status: r.status ?? 1, out: `${r.stdout ?? ''}` }
}

function counts(out) {
  const total = Number(/Total:\s+(\d+)/.exec(out)?.[1] ?? 0)
  const passed = Number(/Passed:\s+(\d+)/.exec(out)?.[1] ?? 0)
  const skipped = Number(/Skipped:\s+(\d+)/.exec(out)?.[1] ?? 0)
  return { total, passed, skipped }
}

rmSync('build', { recursive: true, force: true })
const tsc = step('tsc (strict type check + compile)', 'node', ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.test.json'])
if (tsc.status !== 0) {
  console.log('\n0 passed, 1 failed')
  process.exit(1)
}

let passed = 0
let failed = 0
let skipped = 0
const suites = [
  ['unit tests', 'node', [...uvu, 'build/test/unit', ...(only ? [only] : [])]],
]
if (process.getuid?.() !== 0) {
  console.error('\nroot tests: cannot run — they need root to make real mounts, locks and btrfs volumes. Run `npm test` as root.')
  failed++
} else {
  suites.push(['root tests (private mount namespace)', 'unshare', ['-m', '--propagation', 'private', 'node', ...uvu, 'build/test/root', ...(only ? [only] : [])]])
}

for (const [title, cmd, args] of suites) {
  const r = step(title, cmd, args)
  const c = counts(r.out)
  passed += c.passed
  skipped += c.skipped
  const bad = c.total - c.passed - c.skipped
  failed += bad
  if (r.status !== 0 && bad === 0) failed++ // crashed before counting, or unshare failed
  if (c.total === 0 && !only) {
    console.error(`${title}: no test ran`)
    failed++
  }
}
if (skipped > 0) {
  console.error(`${skipped} test(s) skipped: skipped tests are not allowed here`)
  failed += skipped
}
console.log(`\n${passed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)

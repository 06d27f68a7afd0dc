import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as os from 'node:os'
import { parseCli, type CliRequest } from '../../src/cli.js'
import { resolveOptions } from '../../src/options.js'
import { CleanerError } from '../../src/errors.js'

const DAY = 24 * 3600_000

function usage(argv: string[]): string {
  try {
    parseCli(argv)
  } catch (err) {
    assert.instance(err, CleanerError)
    assert.is((err as CleanerError).code, 'EUSAGE')
    return (err as Error).message
  }
  throw new Error(`expected a usage error for ${argv.join(' ')}`)
}

function clean(argv: string[]) {
  const r: CliRequest = parseCli(argv)
  if (r.kind !== 'clean') throw new Error(`expected a clean request, got ${r.kind}`)
  return r.flags
}

test('defaults: not a dry run, default max age 7d, grace 10s, run lock, keep root', () => {
  const o = resolveOptions(clean([]), {})
  assert.is(o.dryRun, false)
  assert.is(o.maxAgeMs, 7 * DAY)
  assert.is(o.graceMs, 10_000)
  assert.equal(o.buildRoots, [])
  assert.is(o.verbosity, 'normal')
  assert.is(o.runLock, '/run/build-cleaner.lock')
  assert.is(o.keepRoot, true)
  assert.is(o.minFreeBytes, undefined)
  assert.is(o.jobs, Math.min(os.availableParallelism(), 4))
})

test('--jobs / -j: walkers for a deletion, over the config; a whole number from 1 to 64', () => {
  assert.is(resolveOptions(clean(['--jobs', '1']), { jobs: 3 }).jobs, 1)
  assert.is(resolveOptions(clean(['-j', '8']), {}).jobs, 8)
  assert.is(resolveOptions(clean([]), { jobs: 3 }).jobs, 3)
  const p = parseCli(['purge', '-j2', '/x'])
  assert.is(p.kind === 'purge' && p.flags.jobs, 2)
  for (const bad of ['0', '65', '1.5', 'many', '', '-1']) {
    assert.is(usage([`--jobs=${bad}`]), `--jobs must be a whole number from 1 to 64 (1: no helper processes), got ${JSON.stringify(bad)}`)
  }
})

test('--dry-run, repeated --build-root, --max-age in h/d/m, --min-free, --json', () => {
  const f = clean(['--dry-run', '--build-root', '/a', '--build-root=/b', '--max-age', '36h', '--json', '--min-free', '60G'])
  assert.is(f.dryRun, true)
  assert.equal(f.buildRoots, ['/a', '/b'])
  assert.is(f.maxAgeMs, 36 * 3600_000)
  assert.is(f.json, true)
  assert.is(f.minFreeBytes, 60 * 1024 ** 3)
  for (const [v, msv] of [['7d', 7 * DAY], ['90m', 90 * 60_000], ['1.5h', 5400_000]] as const) {
    assert.is(clean(['--max-age', v]).maxAgeMs, msv)
  }
})

test('flags override the config file, which overrides the defaults', () => {
  const config = { buildRoots: ['/srv/archbuild'], maxAge: '3d', minFree: '10G', grace: '30s', runLock: '/run/x.lock', keepRoot: false }
  const fromFile = resolveOptions(clean([]), config)
  assert.equal(fromFile.buildRoots, ['/srv/archbuild'])
  assert.is(fromFile.maxAgeMs, 3 * DAY)
  assert.is(fromFile.minFreeBytes, 10 * 1024 ** 3)
  assert.is(fromFile.graceMs, 30_000)
  assert.is(fromFile.runLock, '/run/x.lock')
  assert.is(fromFile.keepRoot, false)
  const flagged = resolveOptions(clean(['--build-root', '/b', '--max-age', '1d', '--min-free', '5G', '--run-lock', '/tmp/l']), config)
  assert.equal(flagged.buildRoots, ['/b'])
  assert.is(flagged.maxAgeMs, DAY)
  assert.is(flagged.minFreeBytes, 5 * 1024 ** 3)
  assert.is(flagged.runLock, '/tmp/l')
})

test('bad durations and sizes name the flag, what was expected and what came', () => {
  assert.is(usage(['--max-age', '7 dayz']), '--max-age must be a duration like "7d", "36h" or "90m", got "7 dayz"')
  assert.match(usage(['--max-age', '5']), /got "5"/) // a bare number would be milliseconds: refused
  assert.match(usage(['--max-age', '-3d']), /--max-age/)
  assert.match(usage(['--max-age', '0d']), /--max-age/)
  assert.match(usage(['--max-age', '']), /--max-age/)
  assert.match(usage(['--min-free', 'lots']), /--min-free must be a size like "60G".*got "lots"/)
  assert.match(usage(['purge', '--kill', '--grace', 'soon', '/x']), /--grace must be a duration.*got "soon"/)
})

test('unknown flags, missing values, stray arguments are usage errors naming them', () => {
  assert.match(usage(['--dryrun']), /unknown option --dryrun/)
  assert.match(usage(['--max-age']), /--max-age: argument missing/)
  assert.match(usage(['--json=yes']), /--json: does not take an argument/)
  assert.match(usage(['/var/lib/archbuild']), /unexpected argument: \/var\/lib\/archbuild.*build-cleaner purge PATH/)
  assert.match(usage(['--build-root', '']), /--build-root expects a path/)
  assert.match(usage(['-v', '-q']), /exclude each other/)
})

test('purge: paths, --kill, --grace; clean-only and purge-only flags are kept apart', () => {
  const r = parseCli(['purge', '--kill', '--grace', '3s', '--dry-run', '/a/b/c', '/a/b'])
  assert.is(r.kind, 'purge')
  if (r.kind !== 'purge') return
  assert.equal(r.paths, ['/a/b/c', '/a/b'])
  assert.is(r.flags.kill, true)
  assert.is(r.flags.graceMs, 3000)
  assert.is(r.flags.dryRun, true)
  assert.match(usage(['purge']), /purge needs at least one PATH/)
  assert.match(usage(['purge', '--max-age', '1d', '/x']), /--max-age does not apply to purge/)
  assert.match(usage(['purge', '--grace', '1s', '/x']), /--grace only makes sense with --kill/)
  assert.match(usage(['--kill']), /--kill belongs to `build-cleaner purge`/)
})

test('--help and --version', () => {
  assert.equal(parseCli(['--help']), { kind: 'help', command: 'clean' })
  assert.equal(parseCli(['purge', '-h']), { kind: 'help', command: 'purge' })
  assert.is(parseCli(['--version']).kind, 'version')
})

test.run()

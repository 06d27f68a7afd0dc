import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { parseCli } from '../../src/cli.js'
import { CleanerError } from '../../src/errors.js'

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

test('defaults: not a dry run, default max age 7d, no build roots given', () => {
  const r = parseCli([])
  assert.is(r.kind, 'clean')
  if (r.kind !== 'clean') return
  assert.is(r.options.dryRun, false)
  assert.is(r.options.maxAgeMs, 7 * 24 * 3600_000)
  assert.equal(r.options.buildRoots, [])
  assert.is(r.options.verbosity, 'normal')
})

test('--dry-run, repeated --build-root, --max-age in h/d/m, --json', () => {
  const r = parseCli(['--dry-run', '--build-root', '/a', '--build-root=/b', '--max-age', '36h', '--json'])
  if (r.kind !== 'clean') throw new Error('expected clean')
  assert.is(r.options.dryRun, true)
  assert.equal(r.options.buildRoots, ['/a', '/b'])
  assert.is(r.options.maxAgeMs, 36 * 3600_000)
  assert.is(r.options.json, true)
  for (const [v, msv] of [['7d', 7 * 86400_000], ['90m', 90 * 60_000], ['1.5h', 5400_000]] as const) {
    const x = parseCli(['--max-age', v])
    assert.is(x.kind === 'clean' && x.options.maxAgeMs, msv)
  }
})

test('bad durations name the flag, what was expected and what came', () => {
  assert.is(usage(['--max-age', '7 dayz']), '--max-age must be a duration like "7d", "36h" or "90m", got "7 dayz"')
  assert.match(usage(['--max-age', '5']), /got "5"/) // a bare number would be milliseconds: refused
  assert.match(usage(['--max-age', '-3d']), /--max-age/)
  assert.match(usage(['--max-age', '0d']), /--max-age/)
  assert.match(usage(['--max-age', '']), /--max-age/)
})

test('unknown flags, missing values, stray arguments are usage errors naming them', () => {
  assert.match(usage(['--dryrun']), /unknown option --dryrun/)
  assert.match(usage(['--max-age']), /--max-age: argument missing/)
  assert.match(usage(['--json=yes']), /--json: does not take an argument/)
  assert.match(usage(['/var/lib/archbuild']), /unexpected argument: \/var\/lib\/archbuild/)
  assert.match(usage(['--build-root', '']), /--build-root expects a directory/)
  assert.match(usage(['-v', '-q']), /exclude each other/)
})

test('--help and --version', () => {
  assert.is(parseCli(['--help']).kind, 'help')
  assert.is(parseCli(['-h']).kind, 'help')
  assert.is(parseCli(['--version']).kind, 'version')
})

test.run()

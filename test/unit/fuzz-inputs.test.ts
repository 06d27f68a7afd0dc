/**
 * Seeded fuzzing of the parsers parsers-fuzz.test.ts does not cover: the ones that read text a
 * hostile build or a careless admin chooses. A process names itself (/proc/PID/stat's comm: 15
 * bytes of anything, `) ` and newlines included), a build names its subvolumes (`btrfs subvolume
 * list`), an old metrics file may be truncated, and argv, durations, sizes and the config file
 * are typed by hand. Properties: well-formed text parses back to what was generated; anything
 * else parses or throws a CleanerError with the parser's code, never a TypeError or RangeError
 * (which would take the whole run down with a stack trace instead of a clear message).
 * Deterministic: the seed is fixed unless FUZZ_SEED is set; failures name seed and case.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CleanerError, type ErrorCode } from '../../src/errors.js'
import { parseProcStat } from '../../src/kill-users.js'
import { parseSubvolumeList } from '../../src/btrfs.js'
import { parseLastSuccess, renderMetrics } from '../../src/metrics.js'
import { parseCli } from '../../src/cli.js'
import { parseDuration } from '../../src/duration.js'
import { parseSize } from '../../src/size.js'
import { parseConfig } from '../../src/config.js'
import { prng } from '../helpers/random.js'

const SEED = Number(process.env['FUZZ_SEED'] ?? 0xf022)
const CASES = 3000


const rand = prng(SEED)
const int = (n: number) => Math.floor(rand() * n)
const pick = <T>(items: readonly T[]): T => items[int(items.length)]!
const str = (alphabet: readonly string[], max: number, min = 0) => {
  let s = ''
  for (let n = min + int(max - min + 1); n > 0; n--) s += pick(alphabet)
  return s
}

/** Deletes, duplicates or replaces a few characters. */
function mutate(text: string, alphabet: readonly string[]): string {
  let s = text
  for (let n = 1 + int(4); n > 0; n--) {
    const at = int(s.length + 1)
    const op = int(3)
    if (op === 0) s = s.slice(0, at) + s.slice(at + 1 + int(5))
    else if (op === 1) s = s.slice(0, at) + s.slice(Math.max(0, at - int(8)), at) + s.slice(at)
    else s = s.slice(0, at) + str(alphabet, 3, 1) + s.slice(at + int(2))
  }
  return s
}

/** Runs `f`; anything thrown must be a CleanerError with one of `codes`. */
function totalOr(codes: readonly ErrorCode[], f: () => unknown, what: () => string): void {
  try {
    f()
  } catch (err) {
    if (err instanceof CleanerError && codes.includes(err.code)) return
    assert.unreachable(`seed ${SEED}: ${what()}: threw ${String((err as Error)?.stack ?? err)}`)
  }
}

// A process picks its own comm (prctl PR_SET_NAME): up to 15 bytes, any but NUL.
const COMM = [...'abz09 ()[]-_.:/', ') ', ' (', ') S 1 ', '\n', '\t', 'é', '中', '\\']
const STATES = [...'RSDZTtXIWPK']

function statLine(pid: number, comm: string, state: string, ppid: number, start: number): string {
  // fields 3..52 as the kernel prints them; field 22 is the start time
  const fields = [state, String(ppid), ...Array.from({ length: 17 }, () => String(int(1000))), String(start), ...Array.from({ length: 30 }, () => String(int(99999)))]
  return `${pid} (${comm}) ${fields.join(' ')}\n`
}

test('parseProcStat: any comm a process can give itself parses back; mutated lines parse or throw EPARSE', () => {
  for (let i = 0; i < CASES; i++) {
    const pid = 1 + int(4_194_303)
    const comm = str(COMM, 6).slice(0, 15)
    const state = pick(STATES)
    const ppid = int(4_194_304)
    const start = int(2 ** 40)
    const text = statLine(pid, comm, state, ppid, start)
    const where = () => `case ${i}: ${JSON.stringify(text.slice(0, 80))}`
    const got = parseProcStat(text, `/proc/${pid}/stat`)
    assert.equal(got, { pid, state, ppid, startTime: String(start) }, where())
    const bad = mutate(text, [...COMM, '0', '9', ' ', ')'])
    totalOr(['EPARSE'], () => parseProcStat(bad, 'stat'), () => `case ${i} mutated: ${JSON.stringify(bad.slice(0, 120))}`)
    totalOr(['EPARSE'], () => parseProcStat(str(COMM, 40), 'stat'), () => `case ${i} random`)
  }
})

// Subvolume paths are directory names chosen by builds (no NUL, no '/', but spaces, "path", "ID"…).
const SUBNAME = [...'abz09._- ', 'path', ' path ', 'ID', ' gen ', 'é', '中', '<FS_TREE>']

test('parseSubvolumeList: names with spaces and keywords parse back; mutated output parses or throws EPARSE', () => {
  for (let i = 0; i < CASES / 3; i++) {
    const subs = Array.from({ length: 1 + int(5) }, () => ({
      id: 256 + int(100_000),
      path: Array.from({ length: 1 + int(3) }, () => str(SUBNAME, 4, 1)).join('/'),
    }))
    const text = subs.map((s) => `ID ${s.id} gen ${int(9999)} top level ${5 + int(300)} path <FS_TREE>/${s.path}`).join('\n') + '\n'
    assert.equal(parseSubvolumeList(text), subs, `seed ${SEED} case ${i}: ${JSON.stringify(text)}`)
    const bad = mutate(text, [...SUBNAME, '\n', '1', ' '])
    totalOr(['EPARSE'], () => parseSubvolumeList(bad), () => `case ${i} mutated: ${JSON.stringify(bad)}`)
  }
})

test('parseLastSuccess: what renderMetrics wrote reads back; a truncated or mangled file parses or throws EPARSE', () => {
  for (let i = 0; i < CASES / 3; i++) {
    const finishedAt = int(2 ** 41)
    const text = renderMetrics(
      { startedAt: finishedAt - int(10_000), finishedAt, success: rand() < 0.5, outcomes: { removed: int(9), detached: int(9), kept: int(9), failed: int(9) }, freedBytes: int(2 ** 40) },
      rand() < 0.5 ? undefined : int(2 ** 31),
    )
    const back = parseLastSuccess(text, 'm.prom')
    assert.ok(back !== undefined && Number.isFinite(back) && back >= 0, `case ${i}: ${back}`)
    const bad = rand() < 0.3 ? text.slice(0, int(text.length)) : mutate(text, [...'0123456789 .e+-{}#\n', 'NaN', '+Inf', 'build_cleaner_last_success_timestamp_seconds'])
    totalOr(['EPARSE'], () => {
      const v = parseLastSuccess(bad, 'm.prom')
      if (v !== undefined && !(Number.isFinite(v) && v >= 0)) throw new Error(`not a timestamp: ${v}`)
    }, () => `case ${i}: ${JSON.stringify(bad)}`)
  }
})

const ARGS = [
  'purge', '--dry-run', '-n', '--json', '--kill', '--grace', '--max-age', '--min-free', '--build-root', '--config', '--run-lock',
  '--metrics-file', '-v', '-q', '-h', '-V', '--', '-', '--max-age=7d', '--grace=', '-nv', '-x', '--verbose', '--quiet',
  '7d', '0d', '-3d', '1.5h', '1e3d', '60G', '1.5', 'NaNd', '9'.repeat(30) + 'd', '/var/lib/archbuild', '', ' ', '\n', 'é',
]

test('parseCli: any argv gives a request or an EUSAGE error, never another exception', () => {
  for (let i = 0; i < CASES; i++) {
    const argv = Array.from({ length: int(7) }, () => pick(ARGS))
    totalOr(['EUSAGE'], () => parseCli(argv), () => `argv ${JSON.stringify(argv)}`)
  }
})

const UNITS = [...'0123456789.  ', 'd', 'h', 'm', 's', 'ms', 'y', 'w', 'K', 'M', 'G', 'T', 'KiB', 'GB', 'b', 'B', 'e', '-', '+', 'days', 'Infinity', 'NaN']

test('parseDuration and parseSize: any text gives a positive safe number or EUSAGE', () => {
  for (let i = 0; i < CASES; i++) {
    const text = str(UNITS, 6)
    totalOr(['EUSAGE'], () => {
      const ms = parseDuration('--max-age', text)
      if (!(ms > 0 && Number.isFinite(ms))) throw new Error(`duration ${ms}`)
    }, () => `duration ${JSON.stringify(text)}`)
    totalOr(['EUSAGE'], () => {
      const bytes = parseSize('--min-free', text)
      if (!(Number.isSafeInteger(bytes) && bytes >= 0)) throw new Error(`size ${bytes}`)
    }, () => `size ${JSON.stringify(text)}`)
  }
})

const KEYS = ['buildRoots', 'maxAge', 'minFree', 'keepRoot', 'grace', 'metricsFile', 'runLock', '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'maxage', '']
const VALUES: unknown[] = [null, true, false, 0, -1, 1e308, '7d', '60G', '/abs', 'rel', '', [], ['/a'], ['rel'], [1], {}, { a: 1 }, '\u0000', '/a\u0000b']

test('parseConfig: any JSON object (prototype keys included) gives a config or ECONFIG; nothing leaks onto Object.prototype', () => {
  for (let i = 0; i < CASES; i++) {
    const entries = Array.from({ length: int(4) }, () => [pick(KEYS), pick(VALUES)] as const)
    const text = `{${[...new Map(entries)].map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(', ')}}`
    totalOr(['ECONFIG'], () => parseConfig(text, '/etc/build-cleaner.json'), () => text)
    const bad = mutate(text, [...'{}[]":,', 'true', '1', '"x"', '\\'])
    totalOr(['ECONFIG'], () => parseConfig(bad, '/etc/build-cleaner.json'), () => bad)
  }
  assert.is(({} as Record<string, unknown>)['maxAge'], undefined)
  assert.is(Object.getPrototypeOf({}), Object.prototype)
})

test.run()

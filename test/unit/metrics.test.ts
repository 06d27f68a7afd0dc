import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { spawn } from 'node:child_process'
import { parseLastSuccess, readLastSuccess, renderMetrics, writeMetricsAtomically, type RunMetrics } from '../../src/metrics.js'
import { CleanerError } from '../../src/errors.js'

// ---------------------------------------------------------------- a strict exposition-format parser

interface Family {
  type?: string
  help?: string
  samples: Map<string, number> // canonical label set → value
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const FLOAT = /^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN)$/

/** Prometheus text format 0.0.4, strictly: anything doubtful throws naming the line. */
function parseExposition(text: string): Map<string, Family> {
  if (!text.endsWith('\n')) throw new Error('the text must end with a newline')
  const families = new Map<string, Family>()
  const closed = new Set<string>() // families whose sample group has ended
  let current: string | undefined
  const family = (name: string) => {
    let f = families.get(name)
    if (!f) families.set(name, (f = { samples: new Map() }))
    return f
  }
  text.slice(0, -1).split('\n').forEach((line, index) => {
    const fail = (why: string): never => {
      throw new Error(`line ${index + 1}: ${why}: ${JSON.stringify(line)}`)
    }
    if (line === '') fail('empty line')
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line)
    if (meta) {
      const [, kind, name, rest] = meta as unknown as [string, string, string, string]
      if (!NAME.test(name)) fail('bad metric name')
      const f = family(name)
      if (f.samples.size > 0) fail(`${kind} after samples`)
      if (kind === 'HELP') {
        if (f.help !== undefined) fail('second HELP')
        if (/\\[^\\n]|\\$/.test(rest)) fail('bad escape in HELP')
        f.help = rest.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c))
      } else {
        if (f.type !== undefined) fail('second TYPE')
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) fail('bad type')
        f.type = rest
      }
      return
    }
    if (line.startsWith('#')) return // a comment
    const m = /^([^\s{]+)(\{.*\})? (\S+)(?: (-?\d+))?$/.exec(line) ?? fail('not a sample')
    const [, name, labelText = '', value] = m as unknown as [string, string, string | undefined, string]
    if (!NAME.test(name)) fail('bad metric name')
    if (!FLOAT.test(value)) fail('bad value')
    const f = families.get(name)
    if (!f?.type) fail('sample before its TYPE line')
    if (current !== name) {
      if (closed.has(name)) fail('samples of one metric are not grouped together')
      if (current !== undefined) closed.add(current)
      current = name
    }
    const labels = parseLabels(labelText, fail)
    if (f!.samples.has(labels)) fail('duplicate sample')
    f!.samples.set(labels, Number(value.replace('Inf', 'Infinity')))
  })
  return families
}

function parseLabels(text: string, fail: (why: string) => never): string {
  if (text === '') return ''
  const pairs: [string, string][] = []
  let i = 1
  while (text[i] !== '}') {
    const name = /^[^=]*/.exec(text.slice(i))![0]
    if (!LABEL_NAME.test(name)) fail('bad label name')
    if (pairs.some(([n]) => n === name)) fail('duplicate label')
    i += name.length
    if (text.slice(i, i + 2) !== '="') fail('expected ="')
    i += 2
    let value = ''
    for (;;) {
      const c = text[i++]
      if (c === undefined) fail('unterminated label value')
      if (c === '"') break
      if (c === '\\') {
        const e = text[i++]
        if (e === 'n') value += '\n'
        else if (e === '\\' || e === '"') value += e
        else fail('bad escape in label value')
      } else if (c === '\n') fail('raw newline in label value')
      else value += c
    }
    pairs.push([name, value])
    if (text[i] === ',') i++
    else if (text[i] !== '}') fail('expected , or }')
  }
  if (i !== text.length - 1) fail('text after labels')
  return JSON.stringify(pairs.sort(([a], [b]) => (a < b ? -1 : 1)))
}

const label = (outcome: string) => JSON.stringify([['outcome', outcome]])

test('the strict parser itself rejects what Prometheus would reject (so the tests below can fail)', () => {
  const ok = '# HELP a_b Help.\n# TYPE a_b gauge\na_b{x="1\\"\\\\\\n"} 1.5e3\n'
  assert.is(parseExposition(ok).get('a_b')!.samples.get(JSON.stringify([['x', '1"\\\n']])), 1500)
  const bad: [string, string][] = [
    ['# TYPE a gauge\na 1', 'end with a newline'],
    ['a 1\n# TYPE a gauge\n', 'sample before its TYPE'],
    ['# TYPE a gauge\na 1\na 2\n', 'duplicate sample'],
    ['# TYPE a gauge\n# TYPE a gauge\n', 'second TYPE'],
    ['# TYPE a gauge\n# HELP a x\n# HELP a y\n', 'second HELP'],
    ['# TYPE 1a gauge\n', 'bad metric name'],
    ['# TYPE a-b gauge\n', 'bad metric name'],
    ['# TYPE a gauge\na one\n', 'bad value'],
    ['# TYPE a gauge\na{1x="y"} 1\n', 'bad label name'],
    ['# TYPE a gauge\na{x="y\\t"} 1\n', 'bad escape'],
    ['# TYPE a gauge\na{x="y",x="z"} 1\n', 'duplicate label'],
    ['# TYPE a gauge\na{x="y"} 1\na{x="y"} 2\n', 'duplicate sample'],
    ['# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x="1"} 1\n', 'not grouped'],
    ['# TYPE a gauge\na 1\n# HELP a late\n', 'HELP after samples'],
    ['# TYPE a gauge\n\na 1\n', 'empty line'],
    ['# TYPE a gauge\na  1\n', 'not a sample'],
    ['# TYPE a gaug\n', 'bad type'],
  ]
  for (const [text, why] of bad) assert.throws(() => parseExposition(text), (e: Error) => e.message.includes(why), `${JSON.stringify(text)} should fail: ${why}`)
})

// ---------------------------------------------------------------- renderMetrics

const run: RunMetrics = {
  startedAt: 1_732_870_000_000,
  finishedAt: 1_732_870_012_345,
  success: true,
  outcomes: { removed: 3, detached: 1, kept: 7, failed: 0 },
  freedBytes: 12_884_901_888,
}

test('renderMetrics: every metric once, TYPE before samples, HELP for each, values as given', () => {
  const families = parseExposition(renderMetrics(run))
  const expected: Record<string, [string, number][]> = {
    build_cleaner_last_run_timestamp_seconds: [['', 1_732_870_012.345]],
    build_cleaner_last_success_timestamp_seconds: [['', 1_732_870_012.345]],
    build_cleaner_last_run_success: [['', 1]],
    build_cleaner_chroots: [[label('removed'), 3], [label('detached'), 1], [label('kept'), 7], [label('failed'), 0]],
    build_cleaner_freed_bytes: [['', 12_884_901_888]],
    build_cleaner_duration_seconds: [['', 12.345]],
  }
  assert.equal([...families.keys()].sort(), Object.keys(expected).sort())
  for (const [name, samples] of Object.entries(expected)) {
    const f = families.get(name)!
    assert.is(f.type, 'gauge', name)
    assert.ok(f.help && f.help.length > 10, `${name} has a HELP text`)
    assert.equal([...f.samples.entries()].sort(), samples.sort(), name)
  }
})

test('renderMetrics: a failed run keeps the previous success time; none known → 0', () => {
  const failed = { ...run, success: false, outcomes: { removed: 0, detached: 0, kept: 2, failed: 1 } }
  const withPrevious = parseExposition(renderMetrics(failed, 1_700_000_000.5))
  assert.is(withPrevious.get('build_cleaner_last_success_timestamp_seconds')!.samples.get(''), 1_700_000_000.5)
  assert.is(withPrevious.get('build_cleaner_last_run_success')!.samples.get(''), 0)
  assert.is(withPrevious.get('build_cleaner_last_run_timestamp_seconds')!.samples.get(''), 1_732_870_012.345)
  assert.is(withPrevious.get('build_cleaner_chroots')!.samples.get(label('failed')), 1)
  const never = parseExposition(renderMetrics(failed))
  assert.is(never.get('build_cleaner_last_success_timestamp_seconds')!.samples.get(''), 0)
  // a success ignores the previous value
  const ok = parseExposition(renderMetrics(run, 5))
  assert.is(ok.get('build_cleaner_last_success_timestamp_seconds')!.samples.get(''), 1_732_870_012.345)
})

test('renderMetrics: odd values stay valid exposition text (huge, tiny, NaN, clock going backwards)', () => {
  for (const freedBytes of [0, 1, 2 ** 53, 1e21, Number.NaN, Infinity]) {
    const f = parseExposition(renderMetrics({ ...run, freedBytes, finishedAt: run.startedAt - 5 }))
    const got = f.get('build_cleaner_freed_bytes')!.samples.get('')!
    assert.ok(Object.is(got, freedBytes) || got === freedBytes, `${freedBytes} → ${got}`)
    assert.is(f.get('build_cleaner_duration_seconds')!.samples.get(''), 0)
  }
})

test('parseLastSuccess reads back what renderMetrics wrote, and only that sample', () => {
  assert.is(parseLastSuccess(renderMetrics(run), 'x'), 1_732_870_012.345)
  assert.is(parseLastSuccess(renderMetrics({ ...run, success: false }, 1e9), 'x'), 1e9)
  assert.is(parseLastSuccess('# HELP build_cleaner_last_success_timestamp_seconds x\nbuild_cleaner_last_success_timestamp_seconds_total 5\n', 'x'), undefined)
  assert.is(parseLastSuccess('', 'x'), undefined)
  assert.throws(
    () => parseLastSuccess('# ok\nbuild_cleaner_last_success_timestamp_seconds yesterday\n', '/m.prom'),
    (e: Error) => e instanceof CleanerError && e.code === 'EPARSE' && e.message.startsWith('/m.prom:2: malformed build_cleaner_last_success_timestamp_seconds sample'),
  )
})

// ---------------------------------------------------------------- writing the file

function tempDir(): { dir: string; cleanup(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-metrics-'))
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) }
}

test('writeMetricsAtomically: content in place, mode 0644 despite UMask=0077, no temporary file left', () => {
  const t = tempDir()
  const old = process.umask(0o077)
  try {
    const file = path.join(t.dir, 'build_cleaner.prom')
    fs.writeFileSync(file, 'old\n')
    writeMetricsAtomically(file, renderMetrics(run))
    assert.is(fs.readFileSync(file, 'utf8'), renderMetrics(run))
    assert.is(fs.statSync(file).mode & 0o7777, 0o644)
    assert.equal(fs.readdirSync(t.dir), ['build_cleaner.prom'])
    assert.is(readLastSuccess(file), 1_732_870_012.345)
  } finally {
    process.umask(old)
    t.cleanup()
  }
})

test('a failed run written after a success keeps that success time (read → render → write)', () => {
  const t = tempDir()
  try {
    const file = path.join(t.dir, 'build_cleaner.prom')
    assert.is(readLastSuccess(file), undefined, 'no previous file')
    writeMetricsAtomically(file, renderMetrics(run, readLastSuccess(file)))
    const later = { ...run, startedAt: run.startedAt + 3_600_000, finishedAt: run.finishedAt + 3_600_000, success: false }
    writeMetricsAtomically(file, renderMetrics(later, readLastSuccess(file)))
    const f = parseExposition(fs.readFileSync(file, 'utf8'))
    assert.is(f.get('build_cleaner_last_success_timestamp_seconds')!.samples.get(''), 1_732_870_012.345)
    assert.is(f.get('build_cleaner_last_run_timestamp_seconds')!.samples.get(''), 1_732_873_612.345)
  } finally {
    t.cleanup()
  }
})

test('writeMetricsAtomically replaces a planted symlink instead of writing through it', () => {
  const t = tempDir()
  try {
    const victim = path.join(t.dir, 'victim')
    fs.writeFileSync(victim, 'precious\n')
    const file = path.join(t.dir, 'build_cleaner.prom')
    fs.symlinkSync(victim, file)
    writeMetricsAtomically(file, 'x 1\n')
    assert.is(fs.readFileSync(victim, 'utf8'), 'precious\n')
    assert.ok(fs.lstatSync(file).isFile())
    assert.is(fs.readFileSync(file, 'utf8'), 'x 1\n')
  } finally {
    t.cleanup()
  }
})

test('writeMetricsAtomically: on failure, ESYS names the path and syscall, and the temporary file is gone', () => {
  const t = tempDir()
  try {
    // rename fails after the temporary file was created, written and synced: the target is a directory
    const file = path.join(t.dir, 'build_cleaner.prom')
    fs.mkdirSync(path.join(file, 'inside'), { recursive: true })
    assert.throws(
      () => writeMetricsAtomically(file, renderMetrics(run)),
      (e: Error) =>
        e instanceof CleanerError && e.code === 'ESYS' && e.syscall === 'rename' && e.path === file &&
        e.message === `cannot write metrics file ${file}: rename '${file}': EISDIR`,
    )
    assert.equal(fs.readdirSync(t.dir), ['build_cleaner.prom'])
    assert.equal(fs.readdirSync(file), ['inside'])

    const nowhere = path.join(t.dir, 'missing-dir', 'm.prom')
    assert.throws(
      () => writeMetricsAtomically(nowhere, 'x 1\n'),
      (e: Error) => e instanceof CleanerError && e.code === 'ESYS' && e.syscall === 'open' && /^cannot write metrics file .*m\.prom: open '.*\/missing-dir\/\.m\.prom\.\d+\.[0-9a-f]{12}\.tmp': ENOENT$/.test(e.message),
    )
    assert.equal(fs.readdirSync(t.dir), ['build_cleaner.prom'])
  } finally {
    t.cleanup()
  }
})

test('readLastSuccess refuses a symlink and a FIFO (without blocking) at the metrics path', () => {
  const t = tempDir()
  try {
    const real = path.join(t.dir, 'real.prom')
    fs.writeFileSync(real, renderMetrics(run))
    const link = path.join(t.dir, 'link.prom')
    fs.symlinkSync(real, link)
    assert.throws(() => readLastSuccess(link), (e: Error) => e instanceof CleanerError && e.code === 'ESYS' && e.message.endsWith('it is a symlink'))
    const fifo = path.join(t.dir, 'fifo.prom')
    const r = spawn('mkfifo', [fifo])
    return new Promise<void>((resolve, reject) => {
      r.on('exit', () => {
        try {
          assert.throws(() => readLastSuccess(fifo), (e: Error) => e instanceof CleanerError && e.message.includes('not a regular file'))
          resolve()
        } catch (err) {
          reject(err)
        } finally {
          t.cleanup()
        }
      })
    })
  } catch (err) {
    t.cleanup()
    throw err
  }
})

// ---------------------------------------------------------------- atomicity, seen by another process

/**
 * A separate process reads `file` in a tight loop and checks that every read is one whole
 * version: `# version N length L` … `# end N`, exactly L bytes. It stops when `stop` exists.
 */
const OBSERVER = `
const fs = require('node:fs')
const [file, stop] = process.argv.slice(1)
let whole = 0, partial = 0, absent = 0, example = ''
process.stdout.write('ready\\n')
while (!fs.existsSync(stop)) {
  let text
  try { text = fs.readFileSync(file, 'utf8') } catch (e) { if (e.code === 'ENOENT') { absent++; continue } throw e }
  const m = /^# version (\\d+) length (\\d+)\\n/.exec(text)
  if (m && text.length === Number(m[2]) && text.endsWith('# end ' + m[1] + '\\n')) whole++
  else { partial++; if (!example) example = text.length + ' bytes: ' + JSON.stringify(text.slice(0, 40)) }
}
process.stdout.write(JSON.stringify({ whole, partial, absent, example }) + '\\n')
`

function version(n: number, bytes: number): string {
  const body = `x_total 1\n# ${'p'.repeat(100)}\n`.repeat(Math.ceil(bytes / 112))
  const tail = `# end ${n}\n`
  let head = `# version ${n} length 0\n`
  const length = head.length + body.length + tail.length
  head = `# version ${n} length ${length + String(length).length - 1}\n`
  return head + body + tail
}

async function observe(file: string, write: (n: number) => void): Promise<{ whole: number; partial: number; example: string }> {
  const stop = `${file}.stop`
  const child = spawn(process.execPath, ['-e', OBSERVER, file, stop], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  await new Promise<void>((resolve) => {
    const poll = () => (out.includes('ready') ? resolve() : setTimeout(poll, 5))
    poll()
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  try {
    for (let n = 1; n <= 12; n++) {
      write(n)
      await new Promise((r) => setTimeout(r, 15)) // let the observer read the whole file too
    }
  } catch (err) {
    child.kill('SIGKILL')
    await exited
    throw err
  } finally {
    fs.writeFileSync(stop, '')
  }
  const code = await exited
  assert.is(code, 0, 'the observer ran to the end')
  const result = JSON.parse(out.split('\n')[1]!) as { whole: number; partial: number; example: string }
  fs.rmSync(stop)
  return result
}

test('atomicity: another process never sees a half-written metrics file (and would, with a plain write)', async () => {
  const t = tempDir()
  try {
    const file = path.join(t.dir, 'build_cleaner.prom')
    const size = 4 * 1024 * 1024
    fs.writeFileSync(file, version(0, size))
    for (let n = 1; n <= 12; n++) assert.is(version(n, size).length, Number(/length (\d+)/.exec(version(n, size))![1]))

    const atomic = await observe(file, (n) => writeMetricsAtomically(file, version(n, size)))
    assert.is(atomic.partial, 0, `a reader saw a partial file: ${atomic.example}`)
    assert.ok(atomic.whole > 0, 'the observer did read the file')
    assert.equal(fs.readdirSync(t.dir), ['build_cleaner.prom'], 'no temporary file left behind')
    assert.is(fs.readFileSync(file, 'utf8'), version(12, size))

    // the control: a plain truncate-and-write in two halves is caught by the same observer
    const plain = await observe(file, (n) => {
      const text = version(n, size)
      fs.writeFileSync(file, text.slice(0, text.length / 2))
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30)
      fs.appendFileSync(file, text.slice(text.length / 2))
    })
    assert.ok(plain.partial > 0, 'the observer detects partial files')
  } finally {
    t.cleanup()
  }
})

test.run()

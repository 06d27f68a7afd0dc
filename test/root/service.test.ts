/**
 * build-cleaner as a service (issue 4), through the real CLI in a private mount namespace:
 * exit codes for each path, config errors, --min-free on a small filesystem, the metrics file
 * parsed back, journald priority prefixes, SIGTERM mid-run, purge --kill against a daemon that
 * double-forks, a whole-group purge and its dry run, TTY progress. systemd, node_exporter and an
 * admin at a terminal each see one of these surfaces; a regression in any of them is silent
 * until the disk fills up, so each is asserted from the outside, with a canary next to it.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { spawnSync } from 'node:child_process'
import { assertRootSandbox, isMountPoint, listing, mountPointsBelow, sh } from '../helpers/sys.js'
import { buildFixture, makeMiniChroot } from '../helpers/fixture.js'
import { cliShellCommand, runCliMany, runCliSync, startCli } from '../helpers/cli.js'
import {
  age,
  alive,
  entryOf,
  flockStatus,
  leakMount,
  locksOn,
  locksText,
  makeCopy,
  makeWorld,
  mountinfoText,
  parseReport,
  realRunOptions,
  Sessions,
  until,
  type World,
} from '../helpers/build-root.js'
import { systemIo, withIo } from '../../src/io.js'
import { recordingLogger } from '../../src/logger.js'
import { runClean } from '../../src/run.js'

assertRootSandbox()

const MiB = 1024 * 1024
const base = (w: World) => ['--build-root', w.buildRoot, '--run-lock', w.runLock, '--json']

/** A `umount` on PATH that always fails: a chroot whose leaked mount cannot be detached fails. */
function failingUmount(w: World): Record<string, string> {
  const bin = `${w.dir}/fakebin`
  sh(`mkdir -p '${bin}' && printf '#!/bin/sh\\necho "umount: target is busy" >&2\\nexit 32\\n' > '${bin}/umount' && chmod +x '${bin}/umount'`)
  return { PATH: `${bin}:${process.env['PATH']}` }
}

/** A stale copy with a leaked tmpfs (re-aged: the mount's root has a fresh mtime). */
function copyWithMount(copy: string, ageDays = 30): string {
  makeCopy(copy, { ageDays })
  leakMount(`${copy}/tmp`)
  age(copy, ageDays)
  return copy
}

// ---------------------------------------------------------------------------------- exit codes

test('exit 0: all done; exit 1: a chroot failed (EPERM mid-walk) and the run went on; exit 1: purge refuses a locked chroot', async () => {
  const w = makeWorld('bc-svc-')
  const s = new Sessions()
  const immutable = `${w.group}/stuck/startdir/PKGBUILD`
  try {
    const stale = makeCopy(`${w.group}/stale`)
    const fresh = makeCopy(`${w.group}/fresh`, { ageDays: 0 })
    let r = runCliSync(base(w))
    assert.is(r.status, 0, r.stderr)
    assert.is(entryOf(parseReport(r.stdout), stale).outcome, 'removed')
    assert.not.ok(fs.existsSync(stale))
    assert.ok(fs.existsSync(`${fresh}/startdir/PKGBUILD`))

    const stuck = makeCopy(`${w.group}/stuck`)
    sh(`chattr +i '${immutable}'`)
    age(stuck, 30)
    const other = makeCopy(`${w.group}/other`)
    r = runCliSync(base(w))
    assert.is(r.status, 1, r.stderr)
    const report = parseReport(r.stdout, r.stderr)
    assert.is(entryOf(report, stuck).outcome, 'failed')
    assert.match(entryOf(report, stuck).error ?? '', new RegExp(`unlink '${immutable}': EPERM`))
    assert.is(entryOf(report, other).outcome, 'removed', 'the run went on with the next copy')
    assert.is(report.summary['failed'], 1)
    assert.match(r.stderr, /failed 1$/m)
    sh(`chattr -i '${immutable}'`)

    const locked = makeCopy(`${w.group}/locked`)
    const holder = s.start('flock', [`${locked}.lock`, 'sleep', '600'])
    await until('the lock to be taken', () => locksOn(`${locked}.lock`).length > 0)
    const before = listing(locked)
    r = runCliSync(['purge', ...base(w), locked])
    assert.is(r.status, 1, r.stderr)
    const refused = entryOf(parseReport(r.stdout, r.stderr), locked)
    assert.is(refused.outcome, 'failed')
    assert.match(refused.error ?? '', /refused: in use \(--kill ends these processes first\)/)
    assert.ok(refused.reasons.some((x) => x.startsWith(`locked by pid ${holder} (flock)`)), refused.reasons.join('; '))
    assert.is(listing(locked), before, 'the refused chroot is untouched')
    assert.ok(alive(holder), 'nobody was killed without --kill')
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    spawnSync('chattr', ['-i', immutable])
    await s.stopAll()
    w.cleanup()
  }
})

test('exit 2: bad flags, bad build roots, a missing --config; nothing touched, not even the run lock', async () => {
  const w = makeWorld('bc-svc-')
  try {
    copyWithMount(`${w.group}/stale`)
    const before = { tree: listing(w.dir), mounts: mountinfoText(), locks: locksText() }
    const lock = ['--run-lock', w.runLock]
    const cases: [string[], RegExp][] = [
      [['--max-age', 'soon', ...base(w)], /--max-age must be a duration like "7d".*got "soon"/],
      [['--min-free', 'lots', ...base(w)], /--min-free must be a size like "60G".*got "lots"/],
      [['--frobnicate', ...base(w)], /unknown option --frobnicate/],
      [['--kill', ...base(w)], /--kill belongs to `build-cleaner purge`/],
      [['purge', ...base(w)], /purge needs at least one PATH/],
      [['purge', '--grace', '1s', ...base(w), `${w.group}/stale`], /--grace only makes sense with --kill/],
      [['-v', '-q', ...base(w)], /--verbose and --quiet exclude each other/],
      [['--build-root', `${w.dir}/missing`, ...lock], /build root ".*\/missing" does not exist/],
      [['--build-root', '/', ...lock], /build root "\/" is \//],
      [['--build-root', `${w.canary}/precious`, ...lock], /is not a directory/],
      [['--build-root', w.buildRoot, '--build-root', w.group, ...lock], /build roots must not nest/],
      [['--config', `${w.dir}/missing.json`, ...base(w)], /missing\.json: no such file \(given with --config\)/],
    ]
    const results = await runCliMany(cases.map(([args]) => ({ args })))
    results.forEach((r, i) => {
      const [args, message] = cases[i]!
      assert.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, message)
      assert.match(r.stderr, /^build-cleaner: /)
      assert.not.match(r.stderr, /\n\s+at /, 'no stack trace for bad input')
      assert.is(r.stdout, '', args.join(' '))
    })
    assert.is(listing(w.dir), before.tree, 'nothing touched, no run lock created')
    assert.is(mountinfoText(), before.mounts)
    assert.is(locksText(), before.locks)
  } finally {
    w.cleanup()
  }
})

// ---------------------------------------------------------------------------------- config

test('config errors through the CLI: exit 2 naming file, field, expected and got; a symlink or writable config refused with the reason', async () => {
  const w = makeWorld('bc-svc-')
  try {
    const stale = makeCopy(`${w.group}/stale`)
    const etc = `${w.dir}/etc`
    fs.mkdirSync(etc, { mode: 0o755 })
    const write = (name: string, text: string, mode = 0o644, dir = etc) => {
      fs.writeFileSync(`${dir}/${name}`, text)
      fs.chmodSync(`${dir}/${name}`, mode)
      return `${dir}/${name}`
    }
    const good = write('good.json', JSON.stringify({ buildRoots: [w.buildRoot], runLock: w.runLock }))
    fs.symlinkSync(good, `${etc}/link.json`)
    fs.mkdirSync(`${w.dir}/loose`, { mode: 0o775 })
    fs.chmodSync(`${w.dir}/loose`, 0o775)
    const cases: [string, RegExp][] = [
      [write('comma.json', '{\n  "maxAge": "7d",\n}\n'), /comma\.json:3:1: not valid JSON: expected a quoted key, found '}'/],
      [write('type.json', '{"maxAge": 7}'), /type\.json: config\.maxAge must be a duration like "7d", got 7/],
      [write('list.json', '{"buildRoots": "/srv/archbuild"}'), /config\.buildRoots must be a non-empty list of absolute paths, got "\/srv\/archbuild"/],
      [write('bool.json', '{"keepRoot": "no"}'), /config\.keepRoot must be true or false, got "no"/],
      [write('relative.json', '{"metricsFile": "metrics.prom"}'), /config\.metricsFile must be an absolute path, got "metrics\.prom"/],
      [write('unknown.json', '{"max_age": "7d"}'), /unknown key config\.max_age \(did you mean config\.maxAge\?\)/],
      [write('array.json', '["maxAge"]'), /the config must be a JSON object/],
      [`${etc}/link.json`, /link\.json: it is a symlink: refusing it, since whoever can change it decides what root deletes/],
      [write('world.json', '{}', 0o666), /world\.json: it is writable by group or others \(mode 0666\): refusing it/],
      [write('group.json', '{}', 0o664), /group\.json: it is writable by group or others \(mode 0664\)/],
      [write('indir.json', '{}', 0o644, `${w.dir}/loose`), /its directory .*\/loose is writable by group or others \(mode 0775\)/],
    ]
    const results = await runCliMany(cases.map(([file]) => ({ args: ['--config', file, '--build-root', w.buildRoot, '--run-lock', w.runLock] })))
    results.forEach((r, i) => {
      assert.is(r.status, 2, `${cases[i]![0]}: ${r.stderr}`)
      assert.match(r.stderr, cases[i]![1])
      assert.is(r.stdout, '')
    })
    assert.ok(fs.existsSync(`${stale}/startdir/PKGBUILD`), 'nothing was cleaned under a bad config')
    assert.not.ok(fs.existsSync(w.runLock), 'not even the run lock was taken')
    // Control: the good file through its real path is accepted (the refusals above are about the files).
    const ok = runCliSync(['--config', good, '--dry-run', '--json'])
    assert.is(ok.status, 0, ok.stderr)
    assert.is(entryOf(parseReport(ok.stdout), stale).action, 'remove')
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test('flags override the config file: the file says maxAge 1d (a 30-day-old copy is due), --max-age 100d keeps it', () => {
  const w = makeWorld('bc-svc-')
  try {
    const copy = makeCopy(`${w.group}/month-old`, { ageDays: 30 })
    const etc = `${w.dir}/etc`
    fs.mkdirSync(etc, { mode: 0o755 })
    const config = `${etc}/build-cleaner.json`
    fs.writeFileSync(config, JSON.stringify({ buildRoots: [w.buildRoot], maxAge: '1d', runLock: w.runLock }), { mode: 0o644 })
    // Precondition: the file alone (its build roots, its max age) plans the removal.
    let r = runCliSync(['--config', config, '--dry-run', '--json'])
    assert.is(r.status, 0, r.stderr)
    const planned = entryOf(parseReport(r.stdout), copy)
    assert.is(planned.action, 'remove')
    assert.match(planned.reasons[0]!, /\(max age 1d\)/)

    r = runCliSync(['--config', config, '--max-age', '100d', '--json'])
    assert.is(r.status, 0, r.stderr)
    const kept = entryOf(parseReport(r.stdout), copy)
    assert.is(kept.action, 'keep')
    assert.is(kept.outcome, 'kept')
    assert.match(kept.reasons[0]!, /fresh: last used 30d ago \(max age 100d\)/)
    assert.ok(fs.existsSync(`${copy}/startdir/PKGBUILD`))
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

// ---------------------------------------------------------------------------------- --min-free

test('--min-free on a 64 MiB filesystem: the oldest stale copy alone is removed, the others kept "min free reached"; free space before/after reported', () => {
  const w = makeWorld('bc-svc-')
  try {
    const small = `${w.dir}/small`
    sh(`mkdir '${small}' && mount -t tmpfs -o size=64m small '${small}'`)
    const group = `${small}/archbuild/extra-x86_64`
    const copies = [30, 20, 10].map((days) => makeCopy(`${group}/c${days}`, { ageDays: days, bigFileBytes: 10 * MiB }))
    const [c30, c20, c10] = copies as [string, string, string]
    const free = () => {
      const st = fs.statfsSync(small)
      return st.bavail * st.bsize
    }
    const before = free()
    const minFree = before + 6 * MiB // one 10 MiB copy is enough, none is not
    assert.ok(before < minFree && before + 10 * MiB > minFree, 'precondition: removing one copy is needed and enough')

    const args = ['--build-root', `${small}/archbuild`, '--run-lock', w.runLock, '--json']
    let r = runCliSync([...args, '--min-free', String(minFree)])
    assert.is(r.status, 0, r.stderr)
    let report = parseReport(r.stdout, r.stderr)
    assert.is(entryOf(report, c30).outcome, 'removed', 'the oldest goes first')
    for (const c of [c20, c10]) {
      const e = entryOf(report, c)
      assert.is(e.outcome, 'kept', c)
      assert.ok(e.notes?.some((n) => /^min free reached: enough free space: .* free ≥ min free/.test(n)), JSON.stringify(e))
      assert.ok(fs.existsSync(`${c}/build/big.bin`))
    }
    assert.not.ok(fs.existsSync(c30))
    const [space] = report.freeSpace ?? []
    assert.ok(space, 'freeSpace in the JSON')
    assert.is(space!.buildRoot, `${small}/archbuild`)
    assert.is(space!.minFreeBytes, minFree)
    assert.ok(Math.abs(space!.beforeBytes - before) < MiB, `before ${space!.beforeBytes} vs statfs ${before}`)
    assert.ok(space!.beforeBytes < minFree && space!.afterBytes >= minFree, JSON.stringify(space))
    assert.ok(space!.afterBytes - space!.beforeBytes >= 10 * MiB, 'the removed copy\'s 10 MiB came back')
    assert.match(r.stderr, /free space on .*\/small\/archbuild: .* before, .* after \(min free /)

    // Target already met: nothing removed, but a leaked mount in a stale copy is still detached.
    leakMount(`${c20}/tmp`)
    age(c20, 20)
    assert.equal(mountPointsBelow(c20), [`${c20}/tmp`], 'precondition: a leaked mount')
    r = runCliSync([...args, '--min-free', '1M'])
    assert.is(r.status, 0, r.stderr)
    report = parseReport(r.stdout, r.stderr)
    assert.is(entryOf(report, c20).outcome, 'detached')
    assert.match(entryOf(report, c20).reasons[0]!, /^enough free space: /)
    assert.is(entryOf(report, c10).outcome, 'kept')
    assert.equal(mountPointsBelow(c20), [])
    for (const c of [c20, c10]) assert.ok(fs.existsSync(`${c}/build/big.bin`), `${c} kept`)
    const [space2] = report.freeSpace ?? []
    assert.ok(space2!.beforeBytes >= 1 * MiB && space2!.afterBytes === space2!.beforeBytes, JSON.stringify(space2))
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

// ---------------------------------------------------------------------------------- metrics

interface Family { help: string; type?: string; samples: Map<string, number> }

/** Prometheus text format 0.0.4 as we write it, strictly: HELP, TYPE, grouped samples, final newline. */
function parseExposition(text: string): Map<string, Family> {
  if (!text.endsWith('\n')) throw new Error('metrics text must end with a newline')
  const families = new Map<string, Family>()
  let current: string | undefined
  text.slice(0, -1).split('\n').forEach((line, i) => {
    const fail = (why: string): never => {
      throw new Error(`metrics line ${i + 1}: ${why}: ${JSON.stringify(line)}`)
    }
    let m = /^# HELP ([a-zA-Z_:][\w:]*) (.+)$/.exec(line)
    if (m) {
      if (families.has(m[1]!)) fail('a second HELP for this metric')
      families.set(m[1]!, { help: m[2]!, samples: new Map() })
      current = m[1]
      return
    }
    m = /^# TYPE ([a-zA-Z_:][\w:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line)
    if (m) {
      const f = families.get(m[1]!)
      if (!f || f.type || f.samples.size > 0 || current !== m[1]) fail('TYPE without its HELP, twice, or after samples')
      f!.type = m[2]!
      return
    }
    m = /^([a-zA-Z_:][\w:]*)(?:\{([a-zA-Z_]\w*)="((?:[^"\\\n]|\\[\\"n])*)"\})? (\S+)$/.exec(line) ?? fail('not a sample')
    const [, name, labelName, labelValue, value] = m as unknown as [string, string, string | undefined, string | undefined, string]
    const f = families.get(name)
    if (!f?.type) fail('a sample before its TYPE')
    if (current !== name) fail('samples not grouped under their metric')
    if (!/^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)$/.test(value)) fail('not a float')
    const key = labelName === undefined ? '' : `${labelName}=${labelValue}`
    if (f!.samples.has(key)) fail('a duplicate sample')
    f!.samples.set(key, Number(value))
  })
  return families
}

function sample(families: Map<string, Family>, name: string, labels = ''): number {
  const v = families.get(name)?.samples.get(labels)
  if (v === undefined) throw new Error(`no sample ${name}{${labels}} in: ${[...families.keys()].join(', ')}`)
  return v
}

test('strict metrics parser: rejects what it must (so the metrics tests can fail)', () => {
  const good = '# HELP a_b x\n# TYPE a_b gauge\na_b{outcome="removed"} 1\n'
  assert.is(sample(parseExposition(good), 'a_b', 'outcome=removed'), 1)
  for (const bad of [good.slice(0, -1), 'a_b 1\n', '# HELP a_b x\n# TYPE a_b gauge\na_b one\n', good + 'a_b{outcome="removed"} 2\n', '# TYPE a_b gauge\n', good + '# HELP c x\n# TYPE c gauge\nc 1\na_b 3\n']) {
    assert.throws(() => parseExposition(bad), /metrics (line|text)/, JSON.stringify(bad))
  }
})

test('--metrics-file after a real run: parsed back strictly, counts equal the JSON summary, 0644; a failing run keeps the last success time', () => {
  const w = makeWorld('bc-svc-')
  try {
    makeCopy(`${w.group}/stale`)
    makeCopy(`${w.group}/fresh`, { ageDays: 0 })
    copyWithMount(`${w.group}/polluted`, 0)
    const dir = `${w.dir}/textfile`
    fs.mkdirSync(dir, { mode: 0o755 })
    const file = `${dir}/build_cleaner.prom`
    let r = runCliSync([...base(w), '--metrics-file', file])
    assert.is(r.status, 0, r.stderr)
    let summary = parseReport(r.stdout).summary
    assert.equal([summary['removed'], summary['detached'], summary['kept']], [1, 1, 1], 'precondition: one of each outcome')
    const first = parseExposition(fs.readFileSync(file, 'utf8'))
    for (const outcome of ['removed', 'detached', 'kept', 'failed']) {
      assert.is(sample(first, 'build_cleaner_chroots', `outcome=${outcome}`), summary[outcome], outcome)
    }
    for (const [name, f] of first) assert.is(f.type, 'gauge', name)
    assert.is(sample(first, 'build_cleaner_last_run_success'), 1)
    const lastSuccess = sample(first, 'build_cleaner_last_success_timestamp_seconds')
    assert.is(lastSuccess, sample(first, 'build_cleaner_last_run_timestamp_seconds'))
    assert.ok(Math.abs(lastSuccess - Date.now() / 1000) < 600, `a timestamp in seconds: ${lastSuccess}`)
    assert.is(sample(first, 'build_cleaner_freed_bytes'), summary['freedBytes'])
    assert.ok(sample(first, 'build_cleaner_duration_seconds') >= 0)
    assert.is(fs.statSync(file).mode & 0o777, 0o644)
    assert.equal(fs.readdirSync(dir), ['build_cleaner.prom'], 'no temporary file left')

    // A failing run: the last success time stays the previous one.
    copyWithMount(`${w.group}/stuck`)
    r = runCliSync([...base(w), '--metrics-file', file], { env: failingUmount(w) })
    assert.is(r.status, 1, r.stderr)
    summary = parseReport(r.stdout).summary
    const second = parseExposition(fs.readFileSync(file, 'utf8'))
    assert.ok((summary['failed'] ?? 0) >= 1)
    assert.is(sample(second, 'build_cleaner_chroots', 'outcome=failed'), summary['failed'])
    assert.is(sample(second, 'build_cleaner_last_run_success'), 0)
    assert.is(sample(second, 'build_cleaner_last_success_timestamp_seconds'), lastSuccess)
    assert.ok(sample(second, 'build_cleaner_last_run_timestamp_seconds') >= lastSuccess)
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test('ENOSPC while writing the metrics file: exit 1 naming the path and ENOSPC; the cleaning was still done; no temporary file left', () => {
  const w = makeWorld('bc-svc-')
  try {
    const stale = makeCopy(`${w.group}/stale`)
    const full = `${w.dir}/full`
    sh(`mkdir '${full}' && mount -t tmpfs -o size=4k full '${full}'
        dd if=/dev/zero of='${full}/fill' bs=1k count=64 2>/dev/null || true`)
    assert.throws(() => fs.appendFileSync(`${full}/fill`, 'x'), /ENOSPC/, 'precondition: the filesystem is full')
    const file = `${full}/build_cleaner.prom`
    const r = runCliSync([...base(w), '--metrics-file', file])
    assert.is(r.status, 1, r.stderr)
    assert.match(r.stderr, new RegExp(`cannot write the metrics file ${file}: .*ENOSPC`))
    assert.is(entryOf(parseReport(r.stdout), stale).outcome, 'removed')
    assert.not.ok(fs.existsSync(stale))
    assert.equal(fs.readdirSync(full), ['fill'])
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

// ---------------------------------------------------------------------------------- journald

test('journald: with JOURNAL_STREAM naming stderr every line has its priority prefix (<6> decisions, <5> summary, <3> failure); otherwise none', () => {
  const w = makeWorld('bc-svc-')
  try {
    const env = failingUmount(w)
    const scenario = () => {
      makeCopy(`${w.group}/stale`)
      if (!fs.existsSync(`${w.group}/stuck`)) copyWithMount(`${w.group}/stuck`)
    }
    const runWithStderrFile = (name: string, stream: (st: fs.Stats) => string | undefined) => {
      scenario()
      const log = `${w.dir}/${name}.log`
      const fd = fs.openSync(log, 'w')
      try {
        const r = runCliSync(['--build-root', w.buildRoot, '--run-lock', w.runLock], { env: { ...env, JOURNAL_STREAM: stream(fs.fstatSync(fd)) }, stderrFd: fd })
        assert.is(r.status, 1)
      } finally {
        fs.closeSync(fd)
      }
      return fs.readFileSync(log, 'utf8').split('\n').filter(Boolean)
    }

    const journal = runWithStderrFile('journal', (st) => `${st.dev}:${st.ino}`)
    assert.ok(journal.length >= 4, journal.join('\n'))
    for (const line of journal) assert.match(line, /^<[3-7]>[^<]/, `every line prefixed: ${line}`)
    assert.ok(journal.some((l) => /^<6>.*\/stale: remove: stale: last used/.test(l)), journal.join('\n'))
    assert.ok(journal.some((l) => /^<5>.*\/stale: removed \(/.test(l)), journal.join('\n'))
    assert.ok(journal.some((l) => /^<5>removed 1 \(.*\), detached 0, kept 0, failed 1$/.test(l)), journal.join('\n'))
    assert.ok(journal.some((l) => /^<3>.*\/stuck: failed: umount .*target is busy/.test(l)), journal.join('\n'))

    for (const [name, stream] of [
      ['plain', () => undefined],
      ['wrong', () => '1:2'],
      ['other-file', () => {
        const st = fs.statSync(w.runLock)
        return `${st.dev}:${st.ino}`
      }],
    ] as const) {
      const lines = runWithStderrFile(name, stream)
      assert.ok(lines.length >= 4, lines.join('\n'))
      for (const line of lines) assert.match(line, /^build-cleaner: /, `${name}: no prefix: ${line}`)
      assert.ok(lines.some((l) => /^build-cleaner: error: .*\/stuck: failed:/.test(l)), lines.join('\n'))
    }
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

// ---------------------------------------------------------------------------------- SIGTERM

test('SIGTERM mid-run: stops between chroots, exit 1 saying so, every lock released, no mount half torn down; the next run finishes', async () => {
  const w = makeWorld('bc-svc-')
  try {
    const copies = Array.from({ length: 6 }, (_, i) => `${w.group}/copy${i}`)
    for (const c of copies) {
      makeCopy(c, { files: 20_000 })
      leakMount(`${c}/tmp`)
      leakMount(`${c}/tmp/inner`)
      age(c, 30)
    }
    const mountsBefore = new Map(copies.map((c) => [c, mountPointsBelow(c)]))
    const run = startCli(base(w))
    await until('the first copy to be removed', () => copies.some((c) => !fs.existsSync(c)), 60_000)
    run.child.kill('SIGTERM')
    const r = await run.done
    assert.is(r.status, 1, r.stderr)
    assert.match(r.stderr, /received SIGTERM: stopping after the current step/)
    assert.match(r.stderr, /stopped by a signal before finishing: run again to complete the work/)
    const left = copies.filter((c) => fs.existsSync(c))
    assert.ok(left.length > 0 && left.length < copies.length, `precondition: stopped part-way (${left.length} of ${copies.length} left)`)
    const report = parseReport(r.stdout, r.stderr)
    for (const c of copies) {
      const e = entryOf(report, c)
      if (left.includes(c)) {
        assert.is(e.outcome, 'failed', c)
        assert.match(e.error ?? '', /cancelled/)
        assert.not.match(e.error ?? '', /\n\s+at /, 'no stack trace in a cancellation')
      } else assert.is(e.outcome, 'removed', c)
    }
    for (const c of left) {
      const now = mountPointsBelow(c)
      assert.ok(now.length === 0 || now.join() === mountsBefore.get(c)!.join(), `${c}: all its mounts or none, not ${now.join(', ')}`)
      if (now.length > 0) assert.is(fs.readFileSync(`${c}/tmp/inner/inside`, 'utf8'), 'inside\n')
    }
    for (const lock of [...copies.map((c) => `${c}.lock`), w.runLock]) {
      assert.equal(locksOn(lock), [], `${lock} in /proc/locks`)
      assert.is(flockStatus(lock), 0, `${lock} free`)
    }
    const again = runCliSync(base(w))
    assert.is(again.status, 0, again.stderr)
    for (const c of copies) assert.not.ok(fs.existsSync(c), c)
    assert.equal(mountPointsBelow(w.buildRoot), [])
    for (const c of copies) assert.ok(fs.existsSync(`${c}.lock`))
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test('SIGTERM while umount runs: the teardown is finished (never left half-way), nothing deleted after it, exit 1; not killed by its own signal', async () => {
  const w = makeWorld('bc-svc-')
  try {
    const copy = makeCopy(`${w.group}/stale`)
    leakMount(`${copy}/tmp`)
    leakMount(`${copy}/tmp/inner`)
    age(copy, 30)
    const before = listing(`${copy}/startdir`)
    // umount(8) made slow (and observable): the signal lands while a teardown is under way.
    const bin = `${w.dir}/slowbin`
    const started = `${w.dir}/umount-started`
    const umount = sh('command -v umount').trim()
    sh(`mkdir '${bin}' && printf '#!/bin/sh\\n: > %s\\nsleep 1\\nexec %s "$@"\\n' '${started}' '${umount}' > '${bin}/umount' && chmod +x '${bin}/umount'`)
    const run = startCli(base(w), { env: { PATH: `${bin}:${process.env['PATH']}` } })
    await until('the first umount to start', () => fs.existsSync(started), 30_000)
    run.child.kill('SIGTERM')
    const r = await run.done
    assert.is(r.signal, null, `build-cleaner was killed by the SIGTERM it should have handled:\n${r.stderr}`)
    assert.is(r.status, 1, r.stderr)
    assert.match(r.stderr, /received SIGTERM: stopping after the current step/)
    assert.equal(mountPointsBelow(copy), [], 'the teardown under way was finished: no mount left half torn down')
    assert.is(listing(`${copy}/startdir`), before, 'nothing deleted after the signal')
    assert.match(entryOf(parseReport(r.stdout, r.stderr), copy).error ?? '', /^cancelled after unmounting, before deleting/)
    assert.equal(locksOn(`${copy}.lock`), [])
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test('SIGTERM during the deletion of one big copy stops the walk between two syscalls (the remover\'s cancellation must be reachable from the CLI)', async () => {
  const w = makeWorld('bc-svc-')
  try {
    const copy = makeCopy(`${w.group}/huge`, { files: 200_000 })
    const dirs = fs.readdirSync(`${copy}/build`).length
    const run = startCli(base(w))
    await until('the walk to start', () => !fs.existsSync(copy) || fs.readdirSync(`${copy}/build`).length < dirs, 60_000, 2)
    const remaining = fs.existsSync(copy) ? fs.readdirSync(`${copy}/build`).length : 0
    assert.ok(remaining > dirs / 2, `precondition: SIGTERM is sent while most of the tree is left (${remaining} of ${dirs} dirs)`)
    run.child.kill('SIGTERM')
    const r = await run.done
    assert.is(r.status, 1, r.stderr)
    assert.match(r.stderr, /received SIGTERM/)
    const e = entryOf(parseReport(r.stdout, r.stderr), copy)
    // A synchronous walk never lets the signal handler run: the whole copy would be deleted
    // (here 200k files on tmpfs; on a slow disk, minutes past systemd's TimeoutStopSec → SIGKILL).
    assert.ok(fs.existsSync(copy), 'the walk stopped when asked: the rest of the copy is still there')
    assert.is(e.outcome, 'failed')
    assert.match(e.error ?? '', /cancelled/)
  } finally {
    w.cleanup()
  }
})

test('SIGTERM while a chroot\'s lock is being taken (in-process, deterministic): the chroot fails "cancelled", without a stack trace, nothing deleted', async () => {
  const w = makeWorld('bc-svc-')
  try {
    const a = copyWithMount(`${w.group}/a`)
    const b = makeCopy(`${w.group}/b`)
    const before = { a: listing(a), b: listing(b) }
    const controller = new AbortController()
    let flocks = 0
    const io = withIo(systemIo, {
      run: async (file, args, o) => {
        // The 1st flock is the run lock, the 2nd the first chroot's: systemd's stop arrives then.
        if (file === 'flock' && ++flocks === 2) controller.abort()
        return systemIo.run(file, args, o)
      },
    })
    const options = realRunOptions([w.buildRoot], w.runLock)
    let out = ''
    const log = recordingLogger()
    const code = await runClean(options, { io, log, stdout: (t) => void (out += t), signal: controller.signal })
    assert.is(flocks, 2, 'precondition: aborted while the first chroot was being locked, and nothing was locked after')
    assert.is(code, 1)
    const report = parseReport(out)
    for (const c of [a, b]) {
      const e = entryOf(report, c)
      assert.is(e.outcome, 'failed', c)
      assert.match(e.error ?? '', /^cancelled/, c)
      assert.not.match(e.error ?? '', /\n\s+at |AbortError/, `${c}: a user-facing message, not a stack: ${e.error}`)
    }
    assert.equal(mountPointsBelow(a), [`${a}/tmp`], 'its teardown never started')
    assert.is(listing(a), before.a)
    assert.is(listing(b), before.b)
    assert.ok(log.lines.some((l) => /stopped by a signal/.test(l)), log.lines.join('\n'))
    assert.equal(locksOn(`${a}.lock`), [])
  } finally {
    w.cleanup()
  }
})

// ---------------------------------------------------------------------------------- purge --kill

// Forks orphans every second; on SIGTERM it forks two more and a new copy of itself (mock's
// orphanskill case). Bounded, so a broken run cannot fork forever.
const DAEMON = `trap '(sleep 600 &); (sleep 600 &); (/bin/sh /bin/daemon &)' TERM
i=0
while [ $i -lt 120 ]; do i=$((i + 1)); (sleep 600 &); sleep 1 & wait $!; done
`

test('purge --kill: a daemon chrooted in the copy that double-forks while being killed is ended, every pid named; the copy is removed', async () => {
  const w = makeWorld('bc-svc-')
  const s = new Sessions()
  try {
    const copy = `${w.group}/daemon`
    makeMiniChroot(copy)
    fs.mkdirSync(`${copy}/dev`)
    fs.writeFileSync(`${copy}/dev/null`, '') // busybox sh gives background jobs /dev/null as stdin
    fs.writeFileSync(`${copy}/bin/daemon`, DAEMON)
    fs.writeFileSync(`${copy}.lock`, '')
    const sid = s.start('chroot', [copy, '/bin/sh', '/bin/daemon'])
    await until('the daemon and its orphans', () => s.members(sid).length >= 4)

    const r = await startCli(['purge', '--kill', '--grace', '1s', ...base(w), copy]).done
    assert.is(r.status, 0, r.stderr)
    assert.is(entryOf(parseReport(r.stdout, r.stderr), copy).outcome, 'removed')
    assert.not.ok(fs.existsSync(copy))
    assert.ok(fs.existsSync(`${copy}.lock`), 'a chroot purge keeps its lock file')
    const named = [...r.stderr.matchAll(/killed pid (\d+) \((\w+)\): root, in /g)].map((m) => Number(m[1]))
    assert.ok(named.includes(sid), `the daemon is named: ${r.stderr}`)
    assert.ok(named.length >= 4, `the daemon and its orphans are named: ${named.join(' ')}`)
    await until('the session to be empty', () => s.members(sid).length === 0, 5000, 20)
    for (const pid of named) assert.not.ok(alive(pid), `pid ${pid} left`)
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    await s.stopAll()
    w.cleanup()
  }
})

test('purge of a whole group: its --dry-run changes nothing; then (--kill) every chroot, lock file and the group dir are gone; the host-side mounts survive', () => {
  const fx = buildFixture()
  const runLock = `${fx.scratch.dir}/run.lock`
  try {
    // A stray symlink makes a group purge refuse (hostile.test.ts); this group is otherwise full.
    fs.unlinkSync(`${fx.group}/evil`)
    const members = fs.readdirSync(fx.group).filter((n) => !n.endsWith('.lock')).map((n) => `${fx.group}/${n}`)
    const args = ['purge', '--kill', '--grace', '1s', '--build-root', fx.buildRoot, '--run-lock', runLock, '--json', fx.group]
    const before = { tree: listing(fx.buildRoot), host: listing(fx.hostRun), mounts: mountinfoText(), locks: locksText(), canary: listing(fx.canary) }

    const dry = runCliSync(['purge', '--dry-run', ...args.slice(1)])
    assert.is(dry.status, 0, dry.stderr)
    const plan = parseReport(dry.stdout)
    assert.is(plan.dryRun, true)
    for (const m of members) assert.is(entryOf(plan, m).action, 'remove', m)
    assert.is(entryOf(plan, fx.group).kind, 'group')
    assert.ok(entryOf(plan, `${fx.group}/flocked`).reasons.some((x) => x.startsWith('will end: locked by pid')))
    assert.is(listing(fx.buildRoot), before.tree, 'dry run: tree unchanged')
    assert.is(listing(fx.hostRun), before.host)
    assert.is(mountinfoText(), before.mounts, 'dry run: mounts unchanged')
    assert.is(locksText(), before.locks, 'dry run: locks unchanged')
    for (const [name, pid] of Object.entries(fx.pids)) assert.ok(alive(pid), `dry run: ${name} still alive`)

    const r = runCliSync(args)
    assert.is(r.status, 0, r.stderr)
    const report = parseReport(r.stdout, r.stderr)
    for (const m of members) assert.is(entryOf(report, m).outcome, 'removed', m)
    assert.is(entryOf(report, fx.group).outcome, 'removed')
    assert.not.ok(fs.existsSync(fx.group), 'the group dir is gone, lock files with it')
    for (const [name, pid] of Object.entries(fx.pids)) assert.not.ok(alive(pid), `${name} (pid ${pid}) was ended`)
    for (const u of ['1000', '1001', '1002']) {
      assert.ok(isMountPoint(`${fx.hostRun}/user/${u}`), `host /run/user/${u} still mounted`)
      assert.is(fs.readFileSync(`${fx.hostRun}/user/${u}/session`, 'utf8'), `session of ${u}\n`)
    }
    assert.is(listing(fx.hostRun), before.host)
    assert.ok(fs.existsSync(`${fx.buildRoot}/multilib-x86_64/old/bin/busybox`), 'another group is not touched')
    assert.is(listing(fx.canary), before.canary)
  } finally {
    fx.cleanup()
  }
})

// ---------------------------------------------------------------------------------- progress

test('progress: a purge on a TTY shows "removing … entries" live, and every log line starts on a clean line; with stderr not a TTY, none', () => {
  const w = makeWorld('bc-svc-')
  try {
    const a = makeCopy(`${w.group}/big-a`, { files: 60_000 })
    const b = makeCopy(`${w.group}/big-b`, { files: 60_000 })
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' }
    delete env['JOURNAL_STREAM']
    delete env['FORCE_COLOR']
    // A wide pty, so the progress line is not shortened to the terminal's width.
    const command = `stty cols 400 rows 50; exec ${cliShellCommand(['purge', '--build-root', w.buildRoot, '--run-lock', w.runLock, a])}`
    const tty = spawnSync('script', ['-qec', command, '/dev/null'], { encoding: 'utf8', env })
    const out = tty.stdout
    assert.is(tty.status, 0, out + tty.stderr)
    assert.match(out, new RegExp(`\\r\\x1b\\[2Kremoving ${a}: [\\d,]+ entries`), JSON.stringify(out.slice(0, 2000)))
    assert.not.ok(fs.existsSync(a))
    // The notice "removed" right after the walk must not be glued to the last progress line.
    assert.not.match(out, /entries[^\r\n]*build-cleaner:/, `a log line written after the progress line without clearing it: ${JSON.stringify(out)}`)

    const piped = runCliSync(['purge', '--build-root', w.buildRoot, '--run-lock', w.runLock, b])
    assert.is(piped.status, 0, piped.stderr)
    assert.not.match(piped.stderr, /entries|\x1b/)
    assert.not.ok(fs.existsSync(b))
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test.run()

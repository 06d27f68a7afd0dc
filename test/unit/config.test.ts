import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { execFileSync } from 'node:child_process'
import { DEFAULT_CONFIG, loadConfig, locateJsonError, parseConfig } from '../../src/config.js'
import { CleanerError } from '../../src/errors.js'
import { systemIo, withIo } from '../../src/io.js'
import { recordingLogger } from '../../src/logger.js'

const SRC = '/etc/build-cleaner.json'

function configError(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    assert.instance(err, CleanerError)
    assert.is((err as CleanerError).code, 'ECONFIG', (err as Error).message)
    return (err as Error).message
  }
  throw new Error('expected an ECONFIG error')
}
const parseError = (text: string) => configError(() => parseConfig(text, SRC))

// ---------------------------------------------------------------- parseConfig (pure)

test('a full config: every key as given', () => {
  const text = JSON.stringify({
    buildRoots: ['/var/lib/archbuild', '/srv/archbuild'],
    maxAge: '36h',
    minFree: '60G',
    keepRoot: false,
    grace: '10m',
    metricsFile: '/var/lib/prometheus/node-exporter/build_cleaner.prom',
    runLock: '/run/build-cleaner.lock',
    jobs: 2,
  })
  assert.equal(parseConfig(text, SRC), {
    buildRoots: ['/var/lib/archbuild', '/srv/archbuild'],
    maxAge: '36h',
    minFree: '60G',
    keepRoot: false,
    grace: '10m',
    metricsFile: '/var/lib/prometheus/node-exporter/build_cleaner.prom',
    runLock: '/run/build-cleaner.lock',
    jobs: 2,
  })
  assert.equal(parseConfig('{}', SRC), {})
  assert.equal(parseConfig(' \n{ "keepRoot": true }\n', SRC), { keepRoot: true })
})

test('the sample config shipped in packaging/ is valid', () => {
  const sample = fs.readFileSync(path.join(process.cwd(), 'packaging/build-cleaner.json'), 'utf8')
  const config = parseConfig(sample, 'packaging/build-cleaner.json')
  assert.ok(Object.keys(config).length >= 5, 'the sample shows most keys')
})

test('bad durations and sizes fail at load, naming the file, the key, what was expected and what came', () => {
  assert.is(
    parseError('{"maxAge": "7 dayz"}'),
    `${SRC}: config.maxAge must be a duration like "7d", "36h" or "90m", got "7 dayz"`,
  )
  assert.is(parseError('{"maxAge": "5"}'), `${SRC}: config.maxAge must be a duration like "7d", "36h" or "90m", got "5"`)
  assert.is(parseError('{"grace": "soon"}'), `${SRC}: config.grace must be a duration like "7d", "36h" or "90m", got "soon"`)
  assert.is(parseError('{"minFree": "60 gigs"}'), `${SRC}: config.minFree must be a size like "60G", "512MiB" or "100GB", got "60 gigs"`)
})

test('wrong types name the key and say what came (JSON for scalars, the kind for containers)', () => {
  assert.is(parseError('{"maxAge": 7}'), `${SRC}: config.maxAge must be a duration like "7d", got 7`)
  assert.is(parseError('{"minFree": 60000000000}'), `${SRC}: config.minFree must be a size like "60G", got 60000000000`)
  assert.is(parseError('{"keepRoot": "yes"}'), `${SRC}: config.keepRoot must be true or false, got "yes"`)
  assert.is(parseError('{"keepRoot": null}'), `${SRC}: config.keepRoot must be true or false, got null`)
  assert.is(parseError('{"grace": {"m": 10}}'), `${SRC}: config.grace must be a duration like "10m", got an object`)
  assert.is(
    parseError('{"buildRoots": "/var/lib/archbuild"}'),
    `${SRC}: config.buildRoots must be a non-empty list of absolute paths, got "/var/lib/archbuild"`,
  )
  assert.is(parseError('{"buildRoots": []}'), `${SRC}: config.buildRoots must be a non-empty list of absolute paths, got an array`)
  assert.is(
    parseError('{"buildRoots": ["/a", "var/lib/archbuild"]}'),
    `${SRC}: config.buildRoots[1] must be an absolute path, got "var/lib/archbuild"`,
  )
  assert.is(parseError('{"buildRoots": ["/a", 5]}'), `${SRC}: config.buildRoots[1] must be an absolute path, got 5`)
  assert.is(parseError('{"metricsFile": "build_cleaner.prom"}'), `${SRC}: config.metricsFile must be an absolute path, got "build_cleaner.prom"`)
  assert.is(parseError('{"runLock": ""}'), `${SRC}: config.runLock must be an absolute path, got ""`)
  assert.is(parseError('{"runLock": "/run/x\\u0000y"}'), `${SRC}: config.runLock must be an absolute path, got "/run/x\\u0000y"`)
  assert.is(parseError('{"jobs": "4"}'), `${SRC}: config.jobs must be a whole number from 1 to 64, got "4"`)
  for (const bad of ['0', '1.5', '65', '-1']) assert.match(parseError(`{"jobs": ${bad}}`), `config.jobs must be a whole number from 1 to 64`)
  const long = 'x'.repeat(200)
  assert.is(parseError(`{"maxAge": ${JSON.stringify(long)}}`).length < 300, true, 'a long value is not echoed whole')
})

test('unknown keys are refused, with the near miss or the list of known keys', () => {
  assert.is(parseError('{"max-age": "7d"}'), `${SRC}: unknown key config["max-age"] (did you mean config.maxAge?)`)
  assert.is(parseError('{"maxage": "7d"}'), `${SRC}: unknown key config.maxage (did you mean config.maxAge?)`)
  assert.is(parseError('{"build_roots": ["/a"]}'), `${SRC}: unknown key config.build_roots (did you mean config.buildRoots?)`)
  assert.is(
    parseError('{"dryRun": true}'),
    `${SRC}: unknown key config.dryRun (known keys: buildRoots, maxAge, minFree, keepRoot, grace, metricsFile, runLock, jobs)`,
  )
  assert.match(parseError('{"__proto__": {"maxAge": "1s"}}'), 'unknown key config.__proto__')
  assert.match(parseError('{"constructor": 1}'), 'unknown key config.constructor')
})

test('the config must be a JSON object', () => {
  assert.is(parseError('[]'), `${SRC}: the config must be a JSON object like {"maxAge": "7d"}, got an array`)
  assert.is(parseError('null'), `${SRC}: the config must be a JSON object like {"maxAge": "7d"}, got null`)
  assert.is(parseError('"7d"'), `${SRC}: the config must be a JSON object like {"maxAge": "7d"}, got "7d"`)
})

test('malformed JSON names the file, line and column, and what was expected', () => {
  assert.is(parseError('{\n  "maxAge": "7d",\n}\n'), `${SRC}:3:1: not valid JSON: expected a quoted key, found '}'`)
  assert.is(parseError('{\n  "maxAge": "7d"\n  "grace": "1m"\n}'), `${SRC}:3:3: not valid JSON: expected ',' or '}', found '"'`)
  assert.is(parseError('{"maxAge": 7d}'), `${SRC}:1:13: not valid JSON: expected ',' or '}', found 'd'`)
  assert.is(parseError("{'maxAge': '7d'}"), `${SRC}:1:2: not valid JSON: expected a quoted key, found '''`)
  assert.is(parseError(''), `${SRC}:1:1: not valid JSON: expected a JSON value, found the end of the file`)
  assert.is(parseError('{"maxAge": "7d"'), `${SRC}:1:16: not valid JSON: expected ',' or '}', found the end of the file`)
  assert.is(parseError('{"maxAge": "7d}'), `${SRC}:1:16: not valid JSON: expected a closing quote, found the end of the file`)
  assert.is(parseError('\uFEFF{}'), `${SRC}:1:1: not valid JSON: expected a JSON value, found U+FEFF`)
  assert.is(parseError('{} {}'), `${SRC}:1:4: not valid JSON: expected the end of the file, found '{'`)
  assert.is(parseError('{"a": "x\\q"}'), `${SRC}:1:10: not valid JSON: expected an escape such as \\n, \\" or \\u00e9, found 'q'`)
  assert.is(parseError('// comment\n{}'), `${SRC}:1:1: not valid JSON: expected a JSON value, found '/'`)
})

test('a duplicate key is refused where JSON.parse would silently keep the last one', () => {
  assert.is(
    parseError('{\n  "maxAge": "30d",\n  "maxAge": "1h"\n}'),
    `${SRC}:3:3: not valid JSON: duplicate key "maxAge" (JSON would silently keep only the last one)`,
  )
  assert.match(parseError('{"maxAge": "1d", "max\\u0041ge": "1h"}'), 'duplicate key "maxAge"')
})

test('locateJsonError agrees with JSON.parse on thousands of mutated documents', () => {
  const base = `{\n  "buildRoots": ["/var/lib/archbuild", "/srv/a\\"b\\\\c\\u00e9"],\n  "maxAge": "7d", "n": -1.5e+3, "z": 0,\n  "keepRoot": true, "x": [null, false, {"y": []}, {}]\n}\n`
  const alphabet = '{}[]":,\\ \n\t-+.eE0123456789abfnrtul/\u00e9\u0001'
  let seed = 42
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31
    return seed % n
  }
  let invalid = 0
  for (let round = 0; round < 4000; round++) {
    let text = base
    for (let edits = 1 + rand(3); edits > 0; edits--) {
      const at = rand(text.length + 1)
      const op = rand(3)
      const ch = alphabet[rand(alphabet.length)]!
      text = op === 0 ? text.slice(0, at) + text.slice(at + 1) : op === 1 ? text.slice(0, at) + ch + text.slice(at) : text.slice(0, at) + ch + text.slice(at + 1)
    }
    let parses = true
    try {
      JSON.parse(text)
    } catch {
      parses = false
    }
    const located = locateJsonError(text)
    if (parses && located) assert.match(located.message, /^duplicate key/, `valid JSON flagged: ${JSON.stringify(text)}: ${located.message}`)
    if (!parses) {
      invalid++
      assert.ok(located, `invalid JSON not flagged: ${JSON.stringify(text)}`)
    }
  }
  assert.ok(invalid > 1000, `the mutations produced enough invalid documents (${invalid})`)
})

// ---------------------------------------------------------------- loadConfig (real files)

function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new Error('loadConfig tests need root: the config must be owned by root (run `npm test` as root)')
}

/** A private directory (root, 0700, below /tmp which is root-owned and sticky) with a config in it. */
function scratch(): { dir: string; file: string; cleanup(): void } {
  requireRoot()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-config-'))
  const file = path.join(dir, 'build-cleaner.json')
  fs.writeFileSync(file, '{"maxAge": "3d", "keepRoot": true}\n', { mode: 0o644 })
  fs.chmodSync(file, 0o644)
  return { dir, file, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) }
}

test('loadConfig: a root-owned 0644 file is read and validated', () => {
  const s = scratch()
  try {
    const log = recordingLogger()
    assert.equal(loadConfig(systemIo, s.file, { explicit: true, log }), { maxAge: '3d', keepRoot: true })
    assert.ok(log.lines.some((l) => l.includes(s.file)))
    fs.chmodSync(s.file, 0o600)
    assert.equal(loadConfig(systemIo, s.file, { explicit: true }), { maxAge: '3d', keepRoot: true }, 'root-only readable is fine')
    fs.writeFileSync(s.file, '{"maxAge": "7 dayz"}')
    assert.is(
      configError(() => loadConfig(systemIo, s.file, { explicit: false })),
      `${s.file}: config.maxAge must be a duration like "7d", "36h" or "90m", got "7 dayz"`,
    )
  } finally {
    s.cleanup()
  }
})

test('loadConfig: missing default → {}; missing explicit --config → ECONFIG (exit 2)', () => {
  const s = scratch()
  try {
    const missing = path.join(s.dir, 'nope.json')
    assert.equal(loadConfig(systemIo, missing, { explicit: false }), {})
    assert.equal(loadConfig(systemIo, path.join(s.dir, 'no-dir', 'x.json'), { explicit: false }), {})
    assert.is(configError(() => loadConfig(systemIo, missing, { explicit: true })), `${missing}: no such file (given with --config)`)
    assert.is(configError(() => loadConfig(systemIo, '', { explicit: true })), '--config expects a file path, got an empty string')
    assert.is(DEFAULT_CONFIG, '/etc/build-cleaner.json')
  } finally {
    s.cleanup()
  }
})

test('loadConfig: a relative path is resolved and named absolutely', () => {
  const s = scratch()
  const cwd = process.cwd()
  try {
    process.chdir(s.dir)
    fs.writeFileSync(s.file, '{"grace": 5}')
    assert.is(configError(() => loadConfig(systemIo, 'build-cleaner.json', { explicit: true })), `${s.file}: config.grace must be a duration like "10m", got 5`)
  } finally {
    process.chdir(cwd)
    s.cleanup()
  }
})

test('loadConfig refuses a symlink, even to a good root-owned file, and leaves both alone', () => {
  const s = scratch()
  try {
    const link = path.join(s.dir, 'link.json')
    fs.symlinkSync(s.file, link)
    assert.match(configError(() => loadConfig(systemIo, link, { explicit: true })), `${link}: it is a symlink: refusing it, since whoever can change it decides what root deletes; point --config at the file itself`)
    assert.ok(fs.lstatSync(link).isSymbolicLink())
    assert.is(fs.readFileSync(s.file, 'utf8'), '{"maxAge": "3d", "keepRoot": true}\n')
  } finally {
    s.cleanup()
  }
})

test('loadConfig refuses a file not owned by root, or writable by group or others', () => {
  const s = scratch()
  try {
    fs.chownSync(s.file, 1000, 1000)
    assert.is(
      configError(() => loadConfig(systemIo, s.file, { explicit: false })),
      `${s.file}: it is owned by uid 1000, not root: refusing it, since whoever can change it decides what root deletes; chown root: ${s.file}`,
    )
    fs.chownSync(s.file, 0, 1000)
    for (const mode of [0o664, 0o646, 0o666, 0o622]) {
      fs.chmodSync(s.file, mode)
      assert.match(
        configError(() => loadConfig(systemIo, s.file, { explicit: true })),
        `${s.file}: it is writable by group or others (mode 0${mode.toString(8)}): refusing it`,
      )
    }
  } finally {
    s.cleanup()
  }
})

test('loadConfig refuses a config whose directory someone else could swap it in', () => {
  const s = scratch()
  try {
    fs.chownSync(s.dir, 1000, 1000)
    assert.match(configError(() => loadConfig(systemIo, s.file, { explicit: true })), `its directory ${s.dir} is owned by uid 1000, not root`)
    fs.chownSync(s.dir, 0, 0)
    fs.chmodSync(s.dir, 0o777)
    assert.match(configError(() => loadConfig(systemIo, s.file, { explicit: true })), `its directory ${s.dir} is writable by group or others (mode 0777)`)
    fs.chmodSync(s.dir, 0o1777) // sticky, like /tmp: nobody else can rename or replace root's file
    assert.equal(loadConfig(systemIo, s.file, { explicit: true }), { maxAge: '3d', keepRoot: true })
    // fail closed: in a directory anyone can write, even a missing default is no proof of "no config"
    fs.chmodSync(s.dir, 0o777)
    assert.match(configError(() => loadConfig(systemIo, path.join(s.dir, 'absent.json'), { explicit: false })), 'writable by group or others')
  } finally {
    s.cleanup()
  }
})

test('loadConfig follows symlinked directories to their real place and judges that', () => {
  const s = scratch()
  const open = path.join(s.dir, 'open')
  try {
    fs.mkdirSync(open, { mode: 0o777 })
    fs.chmodSync(open, 0o777)
    fs.writeFileSync(path.join(open, 'c.json'), '{}', { mode: 0o644 })
    const viaLink = path.join(s.dir, 'via')
    fs.symlinkSync(open, viaLink)
    assert.match(configError(() => loadConfig(systemIo, path.join(viaLink, 'c.json'), { explicit: true })), `its directory ${open} is writable by group or others`)
  } finally {
    s.cleanup()
  }
})

test('loadConfig refuses what is not a regular file, without blocking on a FIFO', () => {
  const s = scratch()
  try {
    const fifo = path.join(s.dir, 'fifo.json')
    execFileSync('mkfifo', ['-m', '0644', fifo])
    assert.match(configError(() => loadConfig(systemIo, fifo, { explicit: true })), `${fifo}: it is not a regular file`)
    assert.match(configError(() => loadConfig(systemIo, s.dir, { explicit: true })), `${s.dir}: it is not a regular file`)
  } finally {
    s.cleanup()
  }
})

test('loadConfig judges the descriptor it reads: a swap right before open is caught', () => {
  const s = scratch()
  try {
    const good = path.join(s.dir, 'good.json')
    fs.copyFileSync(s.file, good)
    // the attacker's moment: after every check on names, just before the open
    const swapToSymlink = withIo(systemIo, {
      open: (p, flags) => {
        fs.rmSync(p)
        fs.symlinkSync(good, p)
        return systemIo.open(p, flags)
      },
    })
    assert.match(configError(() => loadConfig(swapToSymlink, s.file, { explicit: true })), 'it is a symlink')
    fs.rmSync(s.file)
    fs.copyFileSync(good, s.file)
    const swapToForeign = withIo(systemIo, {
      open: (p, flags) => {
        fs.rmSync(p)
        fs.writeFileSync(p, '{"maxAge": "1s"}', { mode: 0o644 })
        fs.chownSync(p, 1000, 1000)
        return systemIo.open(p, flags)
      },
    })
    assert.match(configError(() => loadConfig(swapToForeign, s.file, { explicit: true })), 'it is owned by uid 1000, not root')
  } finally {
    s.cleanup()
  }
})

test('loadConfig refuses a huge file and bytes that are not UTF-8; malformed JSON names file:line:column', () => {
  const s = scratch()
  try {
    fs.writeFileSync(s.file, `{"maxAge": "${'7'.repeat(70 * 1024)}d"}`)
    assert.match(configError(() => loadConfig(systemIo, s.file, { explicit: true })), 'is too large for a config file (at most 65536)')
    fs.writeFileSync(s.file, Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]))
    assert.is(configError(() => loadConfig(systemIo, s.file, { explicit: true })), `${s.file}: not valid UTF-8 text`)
    fs.writeFileSync(s.file, '{\n  "maxAge": "7d",\n}\n')
    assert.is(configError(() => loadConfig(systemIo, s.file, { explicit: true })), `${s.file}:3:1: not valid JSON: expected a quoted key, found '}'`)
  } finally {
    s.cleanup()
  }
})

test('loadConfig closes the descriptor on every path', () => {
  const s = scratch()
  try {
    const opened: number[] = []
    const closed: number[] = []
    const io = withIo(systemIo, {
      open: (p, f) => {
        const fd = systemIo.open(p, f)
        opened.push(fd)
        return fd
      },
      close: (fd) => {
        closed.push(fd)
        systemIo.close(fd)
      },
    })
    loadConfig(io, s.file, { explicit: true })
    fs.chmodSync(s.file, 0o666)
    configError(() => loadConfig(io, s.file, { explicit: true }))
    fs.chmodSync(s.file, 0o644)
    fs.writeFileSync(s.file, 'nope')
    configError(() => loadConfig(io, s.file, { explicit: true }))
    assert.is(opened.length, 3)
    assert.equal(closed, opened)
  } finally {
    s.cleanup()
  }
})

test.run()

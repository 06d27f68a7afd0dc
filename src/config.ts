/**
 * The config file (`--config FILE`, default /etc/build-cleaner.json when it exists): loaded and
 * validated here, merged with the flags by the caller. Keys mirror the flags.
 *
 * Trust: a root timer job reads this file and deletes what it says. Whoever can write it — or
 * swap it through its directory — decides what root deletes. So the file must be a regular
 * file owned by root and not writable by group or others, reached through directories that are
 * owned by root and not writable by group or others (unless sticky, like /tmp, where nobody
 * else can rename root's files), and never through a symlink. The directories are checked on
 * the canonical path before the file is opened, and the file is opened with O_NOFOLLOW and
 * checked with fstat on the very descriptor it is read from (an lstat-then-open would race a
 * swap in between). Every bad value fails at load, before anything is touched (exit 2).
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import type { Io } from './io.js'
import type { Logger } from './logger.js'
import { CleanerError, describeSystemError, errnoOf } from './errors.js'
import { parseDuration } from './duration.js'
import { parseSize } from './size.js'
import { MAX_JOBS, parseJobs } from './jobs.js'

export interface FileConfig {
  buildRoots?: string[]
  maxAge?: string
  minFree?: string
  keepRoot?: boolean
  grace?: string
  metricsFile?: string
  runLock?: string
  jobs?: number
}

export const DEFAULT_CONFIG = '/etc/build-cleaner.json'
const MAX_BYTES = 64 * 1024
const O_CLOEXEC = 0o2000000 // not in fs.constants; libuv adds it too, we say it anyway

type Check = (value: unknown, field: string) => unknown
const absolutePath: Check = (v, field) => {
  if (typeof v !== 'string' || !path.isAbsolute(v) || v.includes('\0')) throw expected(field, 'an absolute path', v)
  return v
}
const through = (parse: (field: string, value: string) => unknown, what: string): Check => (v, field) => {
  if (typeof v !== 'string') throw expected(field, what, v)
  parse(field, v) // throws EUSAGE with the field, what was expected and what came
  return v
}
const CHECKS: { readonly [K in keyof Required<FileConfig>]: Check } = {
  buildRoots: (v, field) => {
    if (!Array.isArray(v) || v.length === 0) throw expected(field, 'a non-empty list of absolute paths', v)
    return v.map((item, i) => absolutePath(item, `${field}[${i}]`))
  },
  maxAge: through(parseDuration, 'a duration like "7d"'),
  minFree: through(parseSize, 'a size like "60G"'),
  keepRoot: (v, field) => {
    if (typeof v !== 'boolean') throw expected(field, 'true or false', v)
    return v
  },
  grace: through(parseDuration, 'a duration like "10m"'),
  metricsFile: absolutePath,
  runLock: absolutePath,
  jobs: (v, field) => {
    if (typeof v !== 'number') throw expected(field, `a whole number from 1 to ${MAX_JOBS}`, v)
    return parseJobs(field, v)
  },
}
const KEYS = Object.keys(CHECKS) as (keyof FileConfig)[]

/** Reads and validates the config. `explicit` (--config given): a missing file is an error. */
export function loadConfig(io: Io, file: string, opts: { explicit: boolean; log?: Logger }): FileConfig {
  if (file === '') throw new CleanerError('ECONFIG', '--config expects a file path, got an empty string')
  const absolute = path.resolve(file)
  const text = readTrusted(io, absolute, opts)
  if (text === undefined) {
    opts.log?.debug(`no config file at ${absolute}: using the built-in defaults`)
    return {}
  }
  opts.log?.debug(`config: read ${absolute}`)
  return parseConfig(text, absolute)
}

/** Pure: JSON text → a validated FileConfig. `source` names the file in messages. */
export function parseConfig(text: string, source: string): FileConfig {
  const located = locateJsonError(text)
  if (located) {
    const { line, column, message } = located
    throw new CleanerError('ECONFIG', `${source}:${line}:${column}: not valid JSON: ${message}`, { path: source })
  }
  const data: unknown = JSON.parse(text)
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new CleanerError('ECONFIG', `${source}: the config must be a JSON object like {"maxAge": "7d"}, got ${describe(data)}`, { path: source })
  }
  const config: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(data)) {
    const check = (CHECKS as Record<string, Check>)[key]
    if (!Object.hasOwn(CHECKS, key) || !check) throw unknownKey(source, key)
    try {
      config[key] = check(value, `config.${key}`)
    } catch (err) {
      if (err instanceof CleanerError) throw new CleanerError('ECONFIG', `${source}: ${err.message}`, { path: source })
      throw err
    }
  }
  return config as FileConfig
}

function expected(field: string, what: string, got: unknown): CleanerError {
  return new CleanerError('ECONFIG', `${field} must be ${what}, got ${describe(got)}`)
}

function unknownKey(source: string, key: string): CleanerError {
  const loose = (s: string) => s.toLowerCase().replace(/[-_\s]/g, '')
  const near = KEYS.find((k) => loose(k) === loose(key))
  const hint = near ? `did you mean config.${near}?` : `known keys: ${KEYS.join(', ')}`
  const name = /^[A-Za-z_]\w*$/.test(key) ? `config.${key}` : `config[${JSON.stringify(key)}]`
  return new CleanerError('ECONFIG', `${source}: unknown key ${name} (${hint})`, { path: source })
}

/** What came, for a message: strings and numbers as JSON, containers by kind. */
function describe(v: unknown): string {
  if (Array.isArray(v)) return 'an array'
  if (v === null) return 'null'
  if (typeof v === 'object') return 'an object'
  const json = JSON.stringify(v) ?? String(v)
  return json.length > 80 ? `${json.slice(0, 77)}…` : json
}

/** The file's text, or undefined when it does not exist and `explicit` is false. */
function readTrusted(io: Io, file: string, opts: { explicit: boolean }): string | undefined {
  const refuse = (why: string, fix: string) =>
    new CleanerError('ECONFIG', `${file}: ${why}: refusing it, since whoever can change it decides what root deletes; ${fix}`, { path: file })
  const missing = (err: unknown) => {
    if (!opts.explicit) return undefined
    throw new CleanerError('ECONFIG', `${file}: no such file (given with --config)`, { path: file, syscall: 'open', cause: err })
  }
  const sysError = (err: unknown) =>
    new CleanerError('ECONFIG', `cannot read config ${file}: ${describeSystemError(err)}`, { path: file, cause: err })

  let dir: string
  try {
    dir = fs.realpathSync(path.dirname(file))
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return missing(err)
    throw sysError(err)
  }
  for (let d = dir; ; d = path.dirname(d)) {
    let st: fs.Stats
    try {
      st = io.lstat(d) // canonical: a symlink here means the tree changed under us
    } catch (err) {
      throw sysError(err)
    }
    if (!st.isDirectory()) throw refuse(`${d} is not a directory`, 'try again')
    if (st.uid !== 0) throw refuse(`its directory ${d} is owned by uid ${st.uid}, not root`, `move the config into a directory only root can write, such as /etc`)
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
      throw refuse(`its directory ${d} is writable by group or others (mode ${octal(st.mode)})`, `chmod go-w ${d}, or move the config to /etc`)
    }
    if (d === '/') break
  }

  const real = path.join(dir, path.basename(file))
  let fd: number
  try {
    fd = io.open(real, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK | O_CLOEXEC)
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return missing(err)
    if (errnoOf(err) === 'ELOOP') throw refuse('it is a symlink', `point --config at the file itself`)
    throw sysError(err)
  }
  try {
    const st = io.fstat(fd)
    if (!st.isFile()) throw refuse('it is not a regular file', 'give a regular file')
    if (st.uid !== 0) throw refuse(`it is owned by uid ${st.uid}, not root`, `chown root: ${file}`)
    if ((st.mode & 0o022) !== 0) throw refuse(`it is writable by group or others (mode ${octal(st.mode)})`, `chmod go-w ${file}`)
    if (st.size > MAX_BYTES) throw new CleanerError('ECONFIG', `${file}: ${st.size} bytes is too large for a config file (at most ${MAX_BYTES})`, { path: file })
    const bytes = readFd(fd)
    try {
      return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes)
    } catch {
      throw new CleanerError('ECONFIG', `${file}: not valid UTF-8 text`, { path: file })
    }
  } catch (err) {
    if (err instanceof CleanerError) throw err
    throw sysError(err)
  } finally {
    io.close(fd)
  }
}

/** Reads the descriptor we checked: never the path again. */
function readFd(fd: number): Buffer {
  return fs.readFileSync(fd)
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0')
}

/**
 * Where JSON text first goes wrong, as 1-based line and column, or undefined when it is valid.
 * Node 20's JSON.parse often names no position ("Unexpected token '}', ... is not valid JSON"),
 * and an admin fixing /etc at 3 am wants one. Also refuses duplicate keys, which JSON.parse
 * would silently resolve to the last one. A small recursive-descent walk of RFC 8259.
 */
export function locateJsonError(text: string): { line: number; column: number; message: string } | undefined {
  let i = 0
  const stop = (message: string): never => {
    throw new JsonStop(i, message)
  }
  const found = () => {
    if (i >= text.length) return 'the end of the file'
    const c = text.codePointAt(i)!
    return c > 0x20 && c < 0x7f ? `'${text[i]}'` : `U+${c.toString(16).toUpperCase().padStart(4, '0')}`
  }
  const expect = (what: string): never => stop(`expected ${what}, found ${found()}`)
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++
  }
  const literal = (word: string) => {
    if (!text.startsWith(word, i)) expect('a JSON value')
    i += word.length
  }
  const string = (what: string): string => {
    const start = i
    if (text[i] !== '"') expect(what)
    i++
    for (;;) {
      if (i >= text.length) expect('a closing quote')
      const c = text.charCodeAt(i)
      if (c === 0x22) return text.slice(start, ++i)
      if (c < 0x20) expect('a closing quote (control characters in strings must be escaped)')
      if (c !== 0x5c) i++
      else if (text[++i] === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) i += 5
      else if (i < text.length && '"\\/bfnrt'.includes(text[i]!)) i++
      else expect('an escape such as \\n, \\" or \\u00e9')
    }
  }
  const number = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y
  const value = (depth: number): void => {
    if (depth > 64) stop('nested too deeply')
    ws()
    const c = text[i]
    if (c === '{' || c === '[') {
      const close = c === '{' ? '}' : ']'
      const keys = new Set<string>()
      i++
      ws()
      if (text[i] === close) return void i++
      for (;;) {
        if (close === '}') {
          ws()
          const at = i
          const key = JSON.parse(string('a quoted key')) as string
          if (keys.has(key)) {
            i = at
            stop(`duplicate key ${JSON.stringify(key)} (JSON would silently keep only the last one)`)
          }
          keys.add(key)
          ws()
          if (text[i] !== ':') expect("':'")
          i++
        }
        value(depth + 1)
        ws()
        if (text[i] === ',') i++
        else if (text[i] === close) return void i++
        else expect(`',' or '${close}'`)
      }
    }
    if (c === '"') return void string('a JSON value')
    if (c === 't' || c === 'f' || c === 'n') return literal(c === 't' ? 'true' : c === 'f' ? 'false' : 'null')
    number.lastIndex = i
    if (!number.test(text)) expect('a JSON value')
    i = number.lastIndex
  }
  try {
    value(0)
    ws()
    if (i < text.length) expect('the end of the file')
    return undefined
  } catch (err) {
    if (!(err instanceof JsonStop)) throw err
    const before = text.slice(0, err.at)
    const line = before.split('\n').length
    return { line, column: err.at - before.lastIndexOf('\n'), message: err.message }
  }
}

class JsonStop extends Error {
  constructor(readonly at: number, message: string) {
    super(message)
  }
}

/**
 * Small, fast build roots for the service, hostile-input and crash tests (buildFixture is the
 * full zoo; most of these tests need one or two copies, many times over). Everything lives in
 * one scratch tmpfs: the build root, a canary directory on the SAME filesystem (so a walk that
 * escaped a chroot would reach it: st_dev alone would not stop it) and the run lock, kept
 * outside the build root so "nothing touched" listings are not disturbed by it.
 * Also: what the kernel says about locks and processes, for "no lock held, no helper left".
 */
import * as fs from 'node:fs'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { listing, scratchTmpfs, sh, type Scratch } from './sys.js'
import type { RunOptions } from '../../src/options.js'

export interface World {
  readonly scratch: Scratch
  readonly dir: string
  readonly buildRoot: string
  readonly group: string
  readonly canary: string
  /** listing(canary) when the world was made. */
  readonly canaryBefore: string
  readonly runLock: string
  cleanup(): void
}

export function makeWorld(prefix = 'bc-world-'): World {
  const scratch = scratchTmpfs(prefix)
  const dir = scratch.dir
  const buildRoot = `${dir}/archbuild`
  const group = `${buildRoot}/extra-x86_64`
  const canary = `${dir}/canary`
  fs.mkdirSync(group, { recursive: true })
  fs.mkdirSync(`${canary}/sub`, { recursive: true })
  fs.mkdirSync(`${dir}/run`)
  fs.writeFileSync(`${canary}/precious`, 'precious\n')
  fs.writeFileSync(`${canary}/sub/deep.txt`, 'deep\n')
  fs.symlinkSync('precious', `${canary}/link`)
  return { scratch, dir, buildRoot, group, canary, canaryBefore: listing(canary), runLock: `${dir}/run/run.lock`, cleanup: () => scratch.cleanup() }
}

export interface CopyOptions {
  /** Empty files spread over subdirectories of `perDir` files each (default 0). */
  readonly files?: number
  readonly perDir?: number
  /** One file of this many bytes (pages really allocated). */
  readonly bigFileBytes?: number
  /** Age of the copy, its top-level entries and its lock file, in days (default 30). */
  readonly ageDays?: number
  /** Create `<copy>.lock` (default true). */
  readonly lock?: boolean
}

/** A chroot copy: build/, startdir/PKGBUILD, some files; aged; with its lock file. */
export function makeCopy(copy: string, opts: CopyOptions = {}): string {
  fs.mkdirSync(`${copy}/build`, { recursive: true })
  fs.mkdirSync(`${copy}/startdir`)
  fs.mkdirSync(`${copy}/tmp`)
  fs.writeFileSync(`${copy}/startdir/PKGBUILD`, 'pkgname=demo\n')
  if (opts.files) makeFiles(`${copy}/build`, opts.files, opts.perDir ?? 1000)
  if (opts.bigFileBytes) fs.writeFileSync(`${copy}/build/big.bin`, Buffer.alloc(opts.bigFileBytes, 0x5a))
  if (opts.lock ?? true) fs.writeFileSync(`${copy}.lock`, '')
  age(copy, opts.ageDays ?? 30)
  return copy
}

/** Backdates a chroot as the planner reads its last use: the dir, its top-level entries, its lock. */
export function age(copy: string, days: number): void {
  sh(`cd '${copy}' && find . -maxdepth 1 -exec touch -h -d '${days} days ago' {} +
      if [ -e '${copy}.lock' ]; then touch -h -d '${days} days ago' '${copy}.lock'; fi`)
}

/** `count` empty files in subdirectories d0, d1, … of `perDir` files each. */
export function makeFiles(dir: string, count: number, perDir = 1000): void {
  for (let made = 0, d = 0; made < count; d++) {
    const sub = `${dir}/d${d}`
    fs.mkdirSync(sub, { recursive: true })
    for (let i = 0; i < perDir && made < count; i++, made++) fs.closeSync(fs.openSync(`${sub}/f${i}`, 'w'))
  }
}

/** A tmpfs with a file in it, mounted at `dir` (created): a leaked mount. */
export function leakMount(dir: string, name = 'leaked'): void {
  sh(`mkdir -p '${dir}' && mount -t tmpfs '${name}' '${dir}' && echo inside > '${dir}/inside'`)
}

/** How /proc/locks names a file: `MAJ:MIN:INODE`, major and minor in hex (KERNEL-NOTES "Locks"). */
export function lockKey(file: string): string {
  const st = fs.statSync(file)
  const major = (st.dev >>> 8) & 0xfff
  const minor = (st.dev & 0xff) | ((st.dev >>> 12) & 0xfff00)
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`
}

/** /proc/locks lines (blocked waiters too) on `file`. */
export function locksOn(file: string): string[] {
  const key = ` ${lockKey(file)} `
  return fs.readFileSync('/proc/locks', 'utf8').split('\n').filter((l) => l.includes(key))
}

/** `flock -n -E 75 FILE true`: 0 when nobody holds an flock on it. */
export function flockStatus(file: string): number | null {
  return spawnSync('flock', ['-n', '-E', '75', file, 'true']).status
}

/** /proc/locks without the line numbers (they shift when other locks come and go). */
export function locksText(): string {
  // /proc/locks is global: keep only locks on filesystems this mount namespace sees, so that a
  // lock taken in another namespace (another test run, a benchmark) cannot disturb the comparison.
  const ours = new Set(
    fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((line) => {
      const [major, minor] = line.split(' ')[2]!.split(':').map(Number)
      return `${major!.toString(16).padStart(2, '0')}:${minor!.toString(16).padStart(2, '0')}`
    }),
  )
  return fs
    .readFileSync('/proc/locks', 'utf8')
    .replace(/^\d+: /gm, '')
    .split('\n')
    .filter((line) => {
      const dev = /\s([0-9a-f]+:[0-9a-f]+):\d+\s/.exec(line)?.[1]
      return dev === undefined || ours.has(dev)
    })
    .sort()
    .join('\n')
}

/** mountinfo as a comparable text (mount ids included: a remount would change them). */
export function mountinfoText(): string {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8')
}

export interface ProcInfo { readonly pid: number; readonly ppid: number; readonly state: string; readonly comm: string; readonly cmdline: string }

/** Every process we can read, now. */
export function processes(): ProcInfo[] {
  const out: ProcInfo[] = []
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8')
      const close = stat.lastIndexOf(') ')
      const [state = '?', ppid = '0'] = stat.slice(close + 2).split(' ')
      const comm = stat.slice(stat.indexOf('(') + 1, close)
      const cmdline = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ').trim()
      out.push({ pid: Number(name), ppid: Number(ppid), state, comm, cmdline })
    } catch {
      // exited while we looked
    }
  }
  return out
}

/** True while `pid` exists and is not a zombie. */
export function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(') ') + 2, stat.lastIndexOf(') ') + 3) !== 'Z'
  } catch {
    return false
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls (async, so spawned children keep running) until `check` holds; throws after `timeoutMs`. */
export async function until(what: string, check: () => boolean, timeoutMs = 10_000, everyMs = 5): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(everyMs)
  }
}

/**
 * Polls until `ready()` holds, for up to 5 s; a throw (a /proc entry not there yet, a process
 * that has not exec'ed into its final program) counts as "not yet".
 */
export async function untilReadable(what: string, ready: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 5000; Date.now() < deadline; await sleep(20)) {
    try {
      if (ready()) return
    } catch {
      // not there yet
    }
  }
  throw new Error(`timed out waiting for ${what}`)
}

/**
 * Helpers started as session leaders (setsid), so one `pkill -s SID` ends every descendant,
 * however often it double-forked.
 */
export class Sessions {
  readonly #sids: number[] = []
  readonly #children: ChildProcess[] = []

  start(file: string, args: readonly string[], opts: { cwd?: string } = {}): number {
    // Node's child is no process group leader: setsid(1) calls setsid(2) and execs in place, so pid = sid.
    const child = spawn('setsid', [file, ...args], { stdio: 'ignore', cwd: opts.cwd ?? '/' })
    if (child.pid === undefined) throw new Error(`could not start ${file}`)
    child.on('error', () => {})
    this.#children.push(child)
    this.#sids.push(child.pid)
    return child.pid
  }

  /** Live (non-zombie) members of a session. */
  members(sid: number): number[] {
    const r = spawnSync('pgrep', ['-s', String(sid)], { encoding: 'utf8' })
    return r.stdout.split('\n').filter(Boolean).map(Number).filter(alive)
  }

  async stopAll(): Promise<void> {
    for (let tries = 0; tries < 100; tries++) {
      const left = this.#sids.filter((sid) => this.members(sid).length > 0)
      if (left.length === 0) return
      for (const sid of left) spawnSync('pkill', ['-KILL', '-s', String(sid)])
      await sleep(20)
    }
    throw new Error(`helpers survived cleanup in sessions ${this.#sids.join(' ')}`)
  }
}

// --- the CLI's --json output ----------------------------------------------------------------

export interface JsonChroot {
  path: string
  kind: string
  action: string
  reasons: string[]
  outcome?: string
  error?: string
  notes?: string[]
  freedBytes?: number
}
export interface JsonReport {
  dryRun: boolean
  chroots: JsonChroot[]
  warnings: string[]
  freeSpace?: { buildRoot: string; minFreeBytes: number; beforeBytes: number; afterBytes: number }[]
  summary: Record<string, number>
}

export function parseReport(stdout: string, stderr = ''): JsonReport {
  try {
    return JSON.parse(stdout) as JsonReport
  } catch {
    throw new Error(`stdout is not the JSON report:\n${stdout}\nstderr:\n${stderr}`)
  }
}

/** The entry for `p`; fails naming the paths there are. */
export function entryOf(report: JsonReport, p: string): JsonChroot {
  const c = report.chroots.find((x) => x.path === p)
  if (!c) throw new Error(`no entry for ${p}: ${report.chroots.map((x) => x.path).join(', ')}`)
  return c
}

/** Options of a real clean run in-process (runClean), as the CLI resolves them with no config; jobs 2, so helpers walk too. */
export function realRunOptions(buildRoots: readonly string[], runLock: string): RunOptions {
  return {
    dryRun: false,
    json: true,
    buildRoots,
    maxAgeMs: 7 * 86_400_000,
    verbosity: 'normal',
    runLock,
    metricsFile: undefined,
    minFreeBytes: undefined,
    keepRoot: true,
    kill: false,
    graceMs: 10_000,
    jobs: 2,
  }
}

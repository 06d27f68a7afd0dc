/**
 * The emergency purge's last resort (`purge --kill`): end every process that holds a chroot's
 * lock or uses the chroot, so that it can be torn down. Nothing else here is irreversible in
 * the same way, so who counts as a victim is narrow:
 * - a user as processes.ts defines it (root by identity or path, cwd, exe), or a live process
 *   with a descriptor of the lock file whose fdinfo has a `lock:` line. A flock belongs to the
 *   open file description, so every process that inherited it holds the lock. /proc/locks never
 *   names a victim on its own: its pid can be stale (a killed `flock` leaves the lock to its
 *   child under the dead pid) or recycled, and on btrfs it names the filesystem, not the file
 *   (KERNEL-NOTES "Locks"). It only lets us tell that someone we cannot see holds the lock.
 * - PID reuse: each victim keeps the start time we read at scan time (/proc/PID/stat field 22),
 *   checked again right before every signal. A pid recycled to another process is left alone.
 *   Node 20 has no pidfd, so a window of microseconds between that check and kill(2) remains.
 * - pid 1, ourselves and our ancestors (the shell or service manager that runs us) are never
 *   signalled. They are reported as survivors, with the reason.
 * - A dying daemon can fork (mock's orphanskill: a daemon that double-forks while it is being
 *   killed). So after each round we scan again and SIGKILL at once whatever appeared. After
 *   maxRounds, whatever is left is a survivor and the purge must not go on.
 * - A zombie (state Z) counts as gone: it has no root, cwd or descriptors any more.
 */
import { CleanerError, describeSystemError, errnoOf, isVanished } from './errors.js'
import type { Io } from './io.js'
import type { Logger } from './logger.js'
import { findLockHolders, parseLocks } from './locks.js'
import { isAtOrBelow } from './paths.js'
import { scanProcesses, usersOfChroots } from './processes.js'

export type Why = 'root' | 'cwd' | 'exe' | 'lock holder'
export interface Victim { readonly pid: number; readonly command: string; readonly why: Why }
/** A process that may still use the chroot, and why it was not (or could not be) killed. */
export interface Survivor extends Victim { readonly reason: string }
export interface KillReport { readonly killed: readonly Victim[]; readonly survivors: readonly Survivor[] }

export interface FileIdentity { readonly path: string; readonly dev: number; readonly ino: number }
export interface KillTarget extends FileIdentity {
  readonly lockFile?: FileIdentity | undefined
  readonly fsType: 'btrfs' | 'other'
}
export interface KillOptions {
  /** How long SIGTERM is given before SIGKILL, once (later rounds SIGKILL at once). */
  readonly graceMs: number
  readonly log: Logger
  readonly maxRounds?: number | undefined
  readonly signal?: AbortSignal | undefined
  readonly sleep?: ((ms: number) => Promise<void>) | undefined
}

const POLL_MS = 100
/** After SIGKILL: time for the kernel to tear the processes down (longer only in state D). */
const KILL_WAIT_MS = 1000

interface Found extends Victim { readonly start: string }
const keyOf = (f: Found): string => `${f.pid}@${f.start}`

export async function killChrootUsers(io: Io, chroot: KillTarget, opts: KillOptions): Promise<KillReport> {
  refuseOwnRoot(io, chroot)
  const { log } = opts
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)))
  const maxRounds = opts.maxRounds ?? 10
  if (!Number.isInteger(maxRounds) || maxRounds < 1 || !(opts.graceMs >= 0)) {
    throw new RangeError(`killChrootUsers: maxRounds must be an integer >= 1 and graceMs >= 0, got ${maxRounds} and ${opts.graceMs}`)
  }
  const spared = protectedPids(io)
  const killed = new Map<string, Victim>()
  const signalled = new Set<string>()
  const refused = new Map<string, string>()

  const confirm = (t: Found): void => {
    if (killed.has(keyOf(t))) return
    killed.set(keyOf(t), { pid: t.pid, command: t.command, why: t.why })
    log.notice(`killed pid ${t.pid} (${t.command}): ${t.why}, in ${chroot.path}`)
  }
  const isGone = (t: Found): boolean => {
    const st = readStat(io, t.pid)
    return st === undefined || st.state === 'Z' || st.state === 'X' || st.startTime !== t.start
  }
  /** Sends `sig` if the pid still is the process we found; true when it was sent. */
  const send = (t: Found, sig: 'SIGTERM' | 'SIGKILL'): boolean => {
    if (isGone(t)) {
      if (signalled.has(keyOf(t))) confirm(t)
      else log.debug(`pid ${t.pid} (${t.command}) is gone or was reused before we signalled it: left alone`)
      return false
    }
    try {
      io.kill(t.pid, sig)
    } catch (err) {
      if (isVanished(err)) {
        if (signalled.has(keyOf(t))) confirm(t) // it died of our earlier signal just now
        return false
      }
      const code = errnoOf(err)
      if (code !== 'EPERM') {
        throw new CleanerError('ESYS', `cannot signal pid ${t.pid}: ${describeSystemError(err)}`, { syscall: 'kill', cause: err })
      }
      refused.set(keyOf(t), `kill(${t.pid}, ${sig}): EPERM (not permitted)`)
      return false
    }
    signalled.add(keyOf(t))
    log.debug(`sent ${sig} to pid ${t.pid} (${t.command}): ${t.why}, in ${chroot.path}`)
    return true
  }
  /** Polls until every process in `pending` is gone or `budgetMs` has passed; returns the living. */
  const waitGone = async (pending: Found[], budgetMs: number): Promise<Found[]> => {
    const settle = (list: Found[]): Found[] =>
      list.filter((t) => {
        if (!isGone(t)) return true
        confirm(t)
        return false
      })
    let alive = settle(pending)
    for (let waited = 0; alive.length > 0 && waited < budgetMs; waited += POLL_MS) {
      await sleep(Math.min(POLL_MS, budgetMs - waited))
      alive = settle(alive)
    }
    return alive
  }

  for (let round = 1; ; round++) {
    const { targets, survivors, warnings } = findVictims(io, chroot, spared, refused)
    const done = (all: Survivor[]): KillReport => {
      for (const w of warnings) log.warn(w) // from the last scan only: earlier ones may have resolved
      return { killed: [...killed.values()], survivors: all }
    }
    if (targets.length === 0) return done(survivors)
    const left = (why: (t: Found) => string): Survivor[] => [
      ...survivors,
      ...targets.map((t) => ({ pid: t.pid, command: t.command, why: t.why, reason: why(t) })),
    ]
    if (round > maxRounds) return done(left((t) => `still there after ${maxRounds} round${maxRounds === 1 ? '' : 's'} of signals${stateNote(io, t)}`))
    if (opts.signal?.aborted) return done(left(() => 'cancelled before it was signalled'))
    let pending = targets
    if (round === 1 && opts.graceMs > 0) {
      pending = await waitGone(targets.filter((t) => send(t, 'SIGTERM')), opts.graceMs)
    }
    await waitGone(pending.filter((t) => send(t, 'SIGKILL')), KILL_WAIT_MS)
  }
}

/** Killing everything whose root is our own root would kill the whole system. */
function refuseOwnRoot(io: Io, chroot: KillTarget): void {
  let own: { dev: number; ino: number } | undefined
  try {
    own = io.stat('/')
  } catch (err) {
    throw new CleanerError('ESYS', `cannot stat /: ${describeSystemError(err)}`, { path: '/', syscall: 'stat', cause: err })
  }
  if (!chroot.path.startsWith('/') || chroot.path === '/' || (own.dev === chroot.dev && own.ino === chroot.ino)) {
    throw new CleanerError('EREFUSED', `refusing to kill the users of ${chroot.path}: it is our own root directory`, { path: chroot.path })
  }
}

/** pid 1, ourselves and every ancestor up to pid 1, with the reason none of them is ever signalled. */
function protectedPids(io: Io): Map<number, string> {
  const spared = new Map<number, string>([
    [1, 'pid 1 (init) is never signalled'],
    [process.pid, 'this is build-cleaner itself'],
  ])
  for (let pid = process.ppid; pid > 1 && !spared.has(pid); pid = readStat(io, pid)?.ppid ?? 0) {
    spared.set(pid, 'an ancestor of build-cleaner (it runs us) is never signalled')
  }
  return spared
}

/** One scan: the processes to signal now, and those that use the chroot but will not be signalled. */
function findVictims(
  io: Io,
  chroot: KillTarget,
  spared: ReadonlyMap<number, string>,
  refused: ReadonlyMap<string, string>,
): { targets: Found[]; survivors: Survivor[]; warnings: string[] } {
  const scan = scanProcesses(io)
  const warnings = scan.unreadable.map((u) => `cannot tell whether pid ${u.pid} uses ${chroot.path}: ${u.what}: ${u.reason}`)
  const found = new Map<number, Victim>()
  for (const u of usersOfChroots(scan, [chroot]).get(chroot.path) ?? []) found.set(u.pid, { pid: u.pid, command: u.command, why: u.how })
  const survivors: Survivor[] = []
  if (chroot.lockFile) {
    const holders = lockFdHolders(io, chroot.lockFile, warnings)
    for (const [pid, command] of holders) {
      if (pid !== process.pid && !found.has(pid)) found.set(pid, { pid, command, why: 'lock holder' })
    }
    if (chroot.fsType === 'other') survivors.push(...unprovenHolders(io, chroot.lockFile, holders))
  }
  let cwd: string | undefined
  try {
    cwd = process.cwd()
  } catch {
    // our working directory was deleted: it is nowhere, so not inside the chroot either
  }
  if (cwd !== undefined && isAtOrBelow(cwd, chroot.path)) found.set(process.pid, { pid: process.pid, command: 'build-cleaner', why: 'cwd' })

  const targets: Found[] = []
  for (const v of found.values()) {
    const reason = spared.get(v.pid)
    if (reason !== undefined) {
      survivors.push({ ...v, reason })
      continue
    }
    const st = readStat(io, v.pid)
    if (st === undefined || st.state === 'Z' || st.state === 'X') continue
    const t: Found = { ...v, start: st.startTime }
    const no = refused.get(keyOf(t))
    if (no !== undefined) survivors.push({ ...v, reason: no })
    else targets.push(t)
  }
  return { targets, survivors, warnings }
}

/**
 * Live processes (ourselves included) with a descriptor of the lock file that holds a lock on it:
 * fdinfo lists granted locks only, so a process blocked waiting for the lock is not among them.
 * A descriptor is the lock file when stat through /proc/PID/fd/N (the kernel's own file, in
 * whatever mount namespace) shows its dev+ino; renamed or not.
 */
function lockFdHolders(io: Io, lock: FileIdentity, warnings: string[]): Map<number, string> {
  const holders = new Map<number, string>()
  for (const name of procRead('/proc', () => io.readdir('/proc'), false) ?? []) {
    if (!/^[1-9][0-9]*$/.test(name)) continue
    const pid = Number(name)
    const dir = `/proc/${pid}/fd`
    try {
      for (const fd of procRead(dir, () => io.readdir(dir)) ?? []) {
        const link = `${dir}/${fd}`
        if (!procRead(link, () => io.readlink(link))?.startsWith('/')) continue // sockets, pipes…
        const st = procRead(link, () => io.stat(link))
        if (st === undefined || st.dev !== lock.dev || st.ino !== lock.ino) continue
        const info = `/proc/${pid}/fdinfo/${fd}`
        if (!/^lock:/m.test(procRead(info, () => io.readFile(info)) ?? '')) continue
        const comm = `/proc/${pid}/comm`
        const command = procRead(comm, () => io.readFile(comm))?.trim()
        if (command !== undefined) holders.set(pid, command)
        break
      }
    } catch (err) {
      if (!(err instanceof Denied)) throw err
      warnings.push(`cannot read the descriptors of pid ${pid} (${err.message}): if it holds ${lock.path}, it is not killed`)
    }
  }
  return holders
}

/**
 * /proc/locks holders that no descriptor proves (not on btrfs: there (device, inode) may name
 * a twin file in another subvolume). A live listed pid without such a descriptor may be a
 * recycled pid: never signalled. A lock held by nobody we can see (another pid namespace, a
 * descriptor in flight over a socket) cannot be ended by a signal either.
 */
function unprovenHolders(io: Io, lock: FileIdentity, proven: ReadonlyMap<number, string>): Survivor[] {
  let text: string
  try {
    text = io.readFile('/proc/locks')
  } catch (err) {
    throw new CleanerError('ESYS', `cannot read /proc/locks: ${describeSystemError(err)}`, { path: '/proc/locks', syscall: 'open', cause: err })
  }
  const out: Survivor[] = []
  for (const h of findLockHolders(io, parseLocks(text), { ...lock, btrfs: false })) {
    if (proven.has(h.pid)) continue
    if (!h.pidGone) {
      const reason = `/proc/locks lists it as holding ${lock.path}, but no descriptor of that file in it holds a lock (a reused pid?): not signalled`
      out.push({ pid: h.pid, command: h.command, why: 'lock holder', reason })
    } else if (proven.size === 0) {
      const reason = `${lock.path} is locked, but by no process we can see (another pid namespace?)`
      out.push({ pid: h.pid, command: h.command, why: 'lock holder', reason })
    }
  }
  return out
}

export interface ProcStat { readonly pid: number; readonly state: string; readonly ppid: number; readonly startTime: string }

/**
 * `/proc/PID/stat`: `PID (COMM) STATE PPID … STARTTIME …`. COMM may hold spaces and `)`, so
 * the fields start after the last `) `; STARTTIME is field 22 (clock ticks since boot).
 */
export function parseProcStat(text: string, where: string): ProcStat {
  const bad = (why: string): CleanerError =>
    new CleanerError('EPARSE', `${where}: ${why}: ${JSON.stringify(text.slice(0, 300))}`, { path: where })
  const open = text.indexOf(' (')
  const close = text.lastIndexOf(') ')
  if (open < 1 || close < open) throw bad('expected "PID (COMM) " at the start')
  const pid = text.slice(0, open)
  const f = text.slice(close + 2).replace(/\n$/, '').split(' ') // f[0] is field 3
  const state = f[0] ?? ''
  const ppid = f[1] ?? ''
  const start = f[22 - 3] ?? ''
  if (!/^[1-9][0-9]*$/.test(pid)) throw bad(`expected a pid, got ${JSON.stringify(pid)}`)
  if (!/^[A-Za-z]$/.test(state)) throw bad(`expected a one-letter state, got ${JSON.stringify(state)}`)
  if (!/^[0-9]+$/.test(ppid) || !/^[0-9]+$/.test(start)) throw bad('expected numeric ppid (field 4) and start time (field 22)')
  return { pid: Number(pid), state, ppid: Number(ppid), startTime: start }
}

/** The process's stat, or undefined when it is gone. */
function readStat(io: Io, pid: number): ProcStat | undefined {
  const file = `/proc/${pid}/stat`
  const text = procRead(file, () => io.readFile(file), false)
  return text === undefined ? undefined : parseProcStat(text, file)
}

function stateNote(io: Io, t: Found): string {
  const st = readStat(io, t.pid)
  return st?.state === 'D' ? ' (state D: in uninterruptible sleep, where SIGKILL waits for the kernel)' : ''
}

/** We may not look at this process's descriptors (EACCES/EPERM). */
class Denied extends Error {}

/** A /proc read: undefined when the entry vanished; Denied for EACCES/EPERM when `deniable`; ESYS otherwise. */
function procRead<T>(file: string, read: () => T, deniable = true): T | undefined {
  try {
    return read()
  } catch (err) {
    if (isVanished(err)) return undefined
    const code = errnoOf(err)
    if (deniable && (code === 'EACCES' || code === 'EPERM')) throw new Denied(`${file}: ${code}`)
    throw new CleanerError('ESYS', `cannot read ${file}: ${describeSystemError(err)}`, { path: file, cause: err })
  }
}

/**
 * /proc/locks, and who holds a lock on one lock file (KERNEL-NOTES "Locks").
 *
 * A line is `N: [-> ]KIND MODE ACCESS PID MAJ:MIN:INODE START END`, major/minor in hex,
 * inode in decimal (fs/locks.c lock_get_status()); `->` marks a blocked waiter, which is not
 * a holder. What makes this more than a parser:
 * - the pid can be stale: a killed `flock` leaves its lock with the child that inherited the
 *   descriptor, still listed under the dead pid. A listed pid that is gone still holds.
 * - OFD locks are listed with pid -1 (and any lock whose owner is invisible to us with 0):
 *   the holder is found through /proc/PID/fdinfo `lock:` lines instead.
 * - on btrfs the line shows the filesystem's device, not the subvolume's st_dev, and inode
 *   numbers repeat across subvolumes, so (device, inode) does not name the file: a listed
 *   pid must prove it with an open descriptor of this very file carrying a `lock:` line.
 * Everything goes through the `Io` seam; a pid or descriptor that vanishes mid-read is
 * tolerated. A process whose descriptors we may not read (EACCES: it has capabilities we
 * lack, as under a capability-bounded service) cannot be ruled out: a listed pid counts as
 * holding, the search for an unlisted holder passes it by. Any other failure is an ESYS
 * error with its path and syscall.
 */
import * as path from 'node:path'
import { CleanerError, describeSystemError, errnoOf, isVanished } from './errors.js'
import type { Io } from './io.js'

export interface LockEntry {
  readonly ordinal: number
  /** FLOCK, POSIX, OFDLCK, ACCESS, LEASE, DELEG, UNKNOWN */
  readonly kind: string
  /** ADVISORY or MANDATORY for locks; ACTIVE, BREAKING or BREAKER for leases. */
  readonly mode: string
  /** READ, WRITE or UNLCK */
  readonly access: string
  /** -1 for OFD locks, 0 when the owner is dead or outside our pid namespace; may be stale. */
  readonly pid: number
  /** -1 (with inode -1) when the kernel printed `<none>:0` (a lease breaker without a file). */
  readonly major: number
  readonly minor: number
  readonly inode: number
  readonly start: string
  readonly end: string
  /** A `->` waiter line: blocked behind the lock above it, not a holder. */
  readonly blocked: boolean
}

const WORD = /^[A-Z]+$/
const MODE = /^(?:[A-Z]+|\*NOINODE\*)$/
const PID = /^-?\d+$/
const FILE_ID = /^([0-9a-fA-F]+):([0-9a-fA-F]+):(\d+)$/
const OFFSET = /^-?\d+$/

/** Parses the whole text; a malformed line is an EPARSE error naming its line number. */
export function parseLocks(text: string): LockEntry[] {
  const lines = text.split('\n')
  if (lines[lines.length - 1] === '') lines.pop()
  return lines.map((line, i) => parseLockLine(line, `/proc/locks line ${i + 1}`))
}

function parseLockLine(line: string, where: string): LockEntry {
  const bad = (why: string): CleanerError =>
    new CleanerError('EPARSE', `${where}: ${why}: ${JSON.stringify(line.slice(0, 300))}`)
  const colon = line.indexOf(':')
  const ordinal = line.slice(0, colon)
  if (colon < 1 || !/^\d+$/.test(ordinal)) throw bad('expected "N:" at the start')
  let rest = line.slice(colon + 1).trimStart()
  const blocked = rest.startsWith('->')
  if (blocked) rest = rest.slice(2)
  const f = rest.trim().split(/ +/)
  if (f.length !== 7) throw bad(`expected 7 fields after the ordinal, got ${f.length}`)
  const [kind, mode, access, pid, fileId, start, end] = f as [string, string, string, string, string, string, string]
  if (!WORD.test(kind) || !MODE.test(mode) || !WORD.test(access)) throw bad('expected KIND MODE ACCESS in capitals')
  if (!PID.test(pid)) throw bad(`expected a pid, got ${JSON.stringify(pid)}`)
  const id = FILE_ID.exec(fileId)
  if (!id && fileId !== '<none>:0') throw bad(`expected MAJ:MIN:INODE, got ${JSON.stringify(fileId)}`)
  if (!OFFSET.test(start) || (end !== 'EOF' && !OFFSET.test(end))) throw bad('expected START and END offsets')
  return {
    ordinal: Number(ordinal),
    kind,
    mode,
    access,
    pid: Number(pid),
    major: id ? parseInt(id[1]!, 16) : -1,
    minor: id ? parseInt(id[2]!, 16) : -1,
    inode: id ? Number(id[3]) : -1,
    start,
    end,
    blocked,
  }
}

/** glibc's major()/minor() of a `st_dev` as Node gives it (BigInt: the encoding spans 64 bits). */
export function decodeDev(dev: number): { major: number; minor: number } {
  if (!Number.isInteger(dev) || dev < 0) throw new RangeError(`decodeDev: not a device number: ${dev}`)
  const d = BigInt(dev)
  const major = ((d & 0xfff00n) >> 8n) | ((d & 0xfffff00000000000n) >> 32n)
  const minor = (d & 0xffn) | ((d & 0xffffff00000n) >> 12n)
  return { major: Number(major), minor: Number(minor) }
}

export interface LockHolder {
  readonly pid: number
  /** /proc/PID/comm, or '?' when the pid is gone. */
  readonly command: string
  readonly kind: string
  /** The listed pid no longer exists, but the lock does (a child inherited the descriptor). */
  readonly pidGone: boolean
}

export interface LockTarget {
  /** The lock file's path. */
  readonly path: string
  /** From lstat of the lock file (Node's st_dev, st_ino). */
  readonly dev: number
  readonly ino: number
  /** The device of its mount as mountinfo shows it (differs from st_dev on btrfs subvolumes). */
  readonly fsDev?: { major: number; minor: number }
  readonly btrfs: boolean
}

/** Who holds a lock on the file (blocked waiters are not holders), one entry per pid and kind. */
export function findLockHolders(io: Io, entries: readonly LockEntry[], target: LockTarget): LockHolder[] {
  const devs = [decodeDev(target.dev)]
  if (target.btrfs && target.fsDev) devs.push(target.fsDev)
  const candidates = entries.filter(
    (e) => !e.blocked && e.inode === target.ino && devs.some((d) => d.major === e.major && d.minor === e.minor),
  )
  const holders = new Map<string, LockHolder>()
  const add = (h: LockHolder): void => {
    const key = `${h.pid} ${h.kind}`
    if (!holders.has(key)) holders.set(key, h)
  }
  let scan: FdLock[] | undefined
  for (const e of candidates) {
    if (e.pid > 0) {
      const command = readComm(io, e.pid)
      const own = command === undefined || !target.btrfs ? [] : fdLocksOf(io, e.pid, target)
      if (command === undefined || own === 'gone') {
        add({ pid: e.pid, command: '?', kind: e.kind, pidGone: true })
        continue
      }
      if (!target.btrfs || own === 'denied' || own.includes(e.kind)) {
        add({ pid: e.pid, command, kind: e.kind, pidGone: false })
        continue
      }
      // btrfs, alive, but no descriptor of this file: the entry belongs to a twin file in
      // another subvolume, or the pid was reused while an heir holds our lock. Ask /proc.
    }
    scan ??= scanFdLocks(io, target)
    const found = scan.filter((s) => s.kind === e.kind)
    for (const s of found) add({ pid: s.pid, command: s.command, kind: s.kind, pidGone: false })
    // An anonymous owner we cannot find (another pid namespace, just exited): still held.
    if (found.length === 0 && e.pid <= 0) add({ pid: e.pid, command: '?', kind: e.kind, pidGone: true })
  }
  return [...holders.values()]
}

interface FdLock {
  readonly pid: number
  readonly command: string
  readonly kind: string
}

/** Every live process's locks taken through a descriptor of the target file. */
function scanFdLocks(io: Io, target: LockTarget): FdLock[] {
  const found: FdLock[] = []
  for (const name of attempt(() => io.readdir('/proc'), '/proc', 'scandir') ?? []) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    const kinds = fdLocksOf(io, pid, target)
    if (typeof kinds === 'string' || kinds.length === 0) continue
    const command = readComm(io, pid)
    if (command !== undefined) for (const kind of new Set(kinds)) found.push({ pid, command, kind })
  }
  return found
}

/**
 * Kinds of the locks `pid` holds through descriptors of the target file; 'gone' when the
 * process is, 'denied' when we may not look. A descriptor is the target when its link reads
 * as the target's path, or (another mount namespace) ends in its name and stat through it
 * shows the target's st_dev/st_ino.
 */
function fdLocksOf(io: Io, pid: number, target: LockTarget): string[] | 'gone' | 'denied' {
  const dir = `/proc/${pid}/fd`
  const name = '/' + path.basename(target.path)
  const kinds: string[] = []
  try {
    const fds = attempt(() => io.readdir(dir), dir, 'scandir', true)
    if (fds === undefined) return 'gone'
    for (const fd of fds) {
      const link = `${dir}/${fd}`
      const to = attempt(() => io.readlink(link), link, 'readlink', true)
      if (to === undefined || (to !== target.path && !to.endsWith(name))) continue
      if (to !== target.path) {
        const st = attempt(() => io.stat(link), link, 'stat', true)
        if (st === undefined || st.dev !== target.dev || st.ino !== target.ino) continue
      }
      const infoPath = `/proc/${pid}/fdinfo/${fd}`
      const info = attempt(() => io.readFile(infoPath), infoPath, 'open', true)
      info?.split('\n').forEach((line, i) => {
        if (line.startsWith('lock:')) kinds.push(parseLockLine(line.slice(5).trim(), `${infoPath} line ${i + 1}`).kind)
      })
    }
  } catch (err) {
    if (err instanceof Denied) return 'denied'
    throw err
  }
  return kinds
}

/** We may not read this process's descriptors (EACCES/EPERM). */
class Denied extends Error {}

function readComm(io: Io, pid: number): string | undefined {
  const file = `/proc/${pid}/comm`
  return attempt(() => io.readFile(file), file, 'open')?.replace(/\n$/, '')
}

/**
 * Runs a /proc read: undefined when the entry vanished (ENOENT/ESRCH); Denied for EACCES or
 * EPERM when `deniable`; ESYS for anything else.
 */
function attempt<T>(read: () => T, file: string, syscall: string, deniable = false): T | undefined {
  try {
    return read()
  } catch (err) {
    if (isVanished(err)) return undefined
    const code = errnoOf(err)
    if (deniable && (code === 'EACCES' || code === 'EPERM')) throw new Denied(file)
    throw new CleanerError('ESYS', `cannot read ${file}: ${describeSystemError(err)}`, { path: file, syscall, cause: err })
  }
}

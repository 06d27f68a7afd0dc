/**
 * Takes and holds `<chroot>.lock` the way devtools does: flock(2), exclusive. makechrootpkg and
 * arch-nspawn block on that lock while a build runs, so holding it keeps builds out of a chroot
 * while we clean it (and tells us when one is running).
 *
 * Node 20 has no flock(2) (KERNEL-NOTES "Locks"). We open the file ourselves (O_CLOEXEC, so no
 * other child inherits it) and hand the descriptor to `flock -n -E 75 3`: the child locks the
 * open file description it shares with us and exits. A flock belongs to the open file
 * description, not to a process, so the lock stays held through our descriptor until we close
 * it or die — no helper process lingers, and a crash (even SIGKILL) frees it.
 * /proc/locks then lists the lock under the flock child's dead pid; that is expected.
 *
 * flock(2) and POSIX/OFD (fcntl, lockf) locks do not see each other: after taking the flock we
 * look in /proc/locks for POSIX/OFD locks on the file too, and back off if anyone holds one.
 *
 * The lock file is never deleted, truncated or recreated: another process may be blocked on it
 * right now, and a fresh inode would let two builds in. A symlink or a non-regular file in its
 * place is refused (O_NOFOLLOW; O_NONBLOCK so a FIFO cannot hang the open).
 */
import * as fs from 'node:fs'
import { CleanerError, describeSystemError, errnoOf } from './errors.js'
import type { Io } from './io.js'
import { findLockHolders, parseLocks, type LockHolder } from './locks.js'
import { readMountTable } from './mountinfo.js'
import { isBtrfs } from './btrfs.js'
import { readMountId } from './unmount.js'

export interface HeldLock {
  readonly path: string
  readonly fd: number
  release(): void
}

export type LockAttempt =
  | { readonly held: HeldLock }
  | { readonly busy: true; readonly holders: readonly LockHolder[]; readonly reason: string }

const O_CLOEXEC = 0o2000000 // not in fs.constants; the same value on x86-64 and arm64
const { O_RDONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK } = fs.constants
const FLOCK_BUSY = 75

/** Tries once, without waiting, to take the exclusive flock on `lockPath` (creating the file if missing). */
export async function lockChroot(io: Io, lockPath: string): Promise<LockAttempt> {
  const fd = openLockFile(io, lockPath)
  let kept = false
  try {
    const r = await io.run('flock', ['-n', '-E', String(FLOCK_BUSY), '3'], { passFds: [fd] })
    if (r.exitCode === FLOCK_BUSY) {
      const holders = holdersOf(io, lockPath, fd).filter((h) => h.pid !== process.pid)
      return { busy: true, holders, reason: describeHolders(holders, 'locked') }
    }
    if (r.exitCode !== 0) {
      const why = r.failure ?? `exit ${r.exitCode}: ${r.stderr.trim()}`
      throw new CleanerError('ESYS', `cannot lock ${lockPath} with flock(1) (util-linux): ${why}`, { path: lockPath, syscall: 'flock' })
    }
    // Our flock is taken. A POSIX or OFD lock would not have stopped it: look for one.
    const others = holdersOf(io, lockPath, fd).filter((h) => h.kind !== 'FLOCK')
    if (others.length > 0) return { busy: true, holders: others, reason: describeHolders(others, 'locked (POSIX/OFD lock)') }
    kept = true
    return { held: heldLock(io, lockPath, fd) }
  } finally {
    if (!kept) io.close(fd) // closing our only descriptor also drops a flock we took
  }
}

function heldLock(io: Io, path: string, fd: number): HeldLock {
  let open = true
  return {
    path,
    fd,
    release() {
      if (!open) return
      open = false
      io.close(fd)
    },
  }
}

/** Opens the existing lock file read-only, or creates it (0644, as devtools would); never follows a symlink. */
function openLockFile(io: Io, lockPath: string): number {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return checkedRegular(io, lockPath, io.open(lockPath, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC))
    } catch (err) {
      if (err instanceof CleanerError) throw err
      if (errnoOf(err) !== 'ENOENT') throw openError(lockPath, err)
    }
    let fd: number
    try {
      fd = io.open(lockPath, O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
    } catch (err) {
      if (errnoOf(err) === 'EEXIST') continue // created by someone else meanwhile: open theirs
      throw openError(lockPath, err)
    }
    try {
      // Io.open has no mode argument (0666 minus umask): set devtools' 0644 on the file we just made.
      fs.fchmodSync(fd, 0o644)
    } catch (err) {
      io.close(fd)
      throw new CleanerError('ESYS', `cannot set the mode of ${lockPath}: ${describeSystemError(err)}`, { path: lockPath, syscall: 'fchmod', cause: err })
    }
    return checkedRegular(io, lockPath, fd)
  }
  throw new CleanerError('ESYS', `cannot open ${lockPath}: it keeps appearing and vanishing`, { path: lockPath, syscall: 'open' })
}

function openError(lockPath: string, err: unknown): CleanerError {
  if (errnoOf(err) === 'ELOOP') {
    return new CleanerError('EREFUSED', `refusing to lock ${lockPath}: it is a symlink (a lock file must be a regular file)`, {
      path: lockPath,
      syscall: 'open',
    })
  }
  return new CleanerError('ESYS', `cannot open lock file: ${describeSystemError(err)}`, { path: lockPath, syscall: 'open', cause: err })
}

function checkedRegular(io: Io, lockPath: string, fd: number): number {
  let regular = false
  try {
    regular = io.fstat(fd).isFile()
  } finally {
    if (!regular) io.close(fd)
  }
  if (!regular) throw new CleanerError('EREFUSED', `refusing to lock ${lockPath}: not a regular file`, { path: lockPath })
  return fd
}

/**
 * Who holds a lock on the file behind `fd`. On btrfs /proc/locks shows the filesystem's device
 * (mountinfo's major:minor of the mount our descriptor is on), not the subvolume's st_dev.
 */
function holdersOf(io: Io, lockPath: string, fd: number): LockHolder[] {
  let text: string
  try {
    text = io.readFile('/proc/locks')
  } catch (err) {
    throw new CleanerError('ESYS', `cannot read /proc/locks: ${describeSystemError(err)}`, { path: '/proc/locks', syscall: 'open', cause: err })
  }
  const st = io.fstat(fd)
  const mount = readMountTable(io).byId(readMountId(io, fd))
  return findLockHolders(io, parseLocks(text), {
    path: lockPath,
    dev: st.dev,
    ino: st.ino,
    btrfs: isBtrfs(io, `/proc/self/fd/${fd}`),
    ...(mount ? { fsDev: { major: mount.major, minor: mount.minor } } : {}),
  })
}

/** `locked by pid 4242 (makechrootpkg)`: the reason shown for a chroot we leave alone. */
export function describeHolders(holders: readonly LockHolder[], what: string): string {
  if (holders.length === 0) return `${what} (the holder is not listed in /proc/locks: another pid namespace?)`
  const who = holders.map((h) =>
    h.pid <= 0 ? 'a process we cannot see' : h.pidGone ? `pid ${h.pid} (gone; a child still holds it)` : `pid ${h.pid} (${h.command})`,
  )
  return `${what} by ${who.join(', ')}`
}

/**
 * Who uses a chroot. A lock file that nobody holds does not prove a chroot is idle (INCIDENTS:
 * a process of one user kept running in a chroot for days), so before anything is deleted we
 * look at every process's root directory, working directory and executable.
 *
 * Why both identity and paths (KERNEL-NOTES "Processes"): `readlink /proc/PID/root` gives the
 * path in THAT process's mount namespace (systemd-nspawn, a bind mount at another path) and
 * only `/` after a lazy unmount, so it can match nothing here. `stat` through the magic link
 * gives the real device:inode, which we compare with each chroot's. Paths still catch the
 * rest: a process chrooted into a subdirectory, or whose cwd or exe lies inside a chroot.
 *
 * /proc is read once per run, through the `Io` seam, and shared by all chroots. A process that
 * exits while we read it is dropped silently (ENOENT/ESRCH); any other failure is listed in
 * `unreadable` for the planner to report, never thrown.
 */
import type { Io } from './io.js'
import { CleanerError, describeSystemError, isVanished } from './errors.js'

export interface ProcessInfo {
  readonly pid: number
  /** /proc/PID/comm, trimmed. */
  readonly command: string
  /** The root directory: identity from stat (following the magic link), path from readlink. */
  readonly root?: { readonly dev: number; readonly ino: number; readonly path: string }
  readonly cwd?: string
  /**
   * Like the two paths above, without the kernel's ` (deleted)` suffix: a directory really
   * named `x (deleted)` may then match `x`, which errs on the safe side (the chroot stays).
   */
  readonly exe?: string
}

export interface Unreadable {
  readonly pid: number
  readonly what: string
  readonly reason: string
}

export interface ProcessScan {
  readonly processes: readonly ProcessInfo[]
  readonly unreadable: readonly Unreadable[]
}

export interface ChrootUse {
  readonly pid: number
  readonly command: string
  readonly how: 'root' | 'cwd' | 'exe'
}

export interface ChrootIdentity {
  readonly path: string
  readonly dev: number
  readonly ino: number
}

const DELETED = ' (deleted)'

/** The kernel appends ` (deleted)` to the path of an unlinked file or directory. */
function undeleted(link: string): string {
  return link.endsWith(DELETED) ? link.slice(0, -DELETED.length) : link
}

/** Reads every process once. Skips our own pid and `excludePids`. */
export function scanProcesses(io: Io, opts: { excludePids?: readonly number[] } = {}): ProcessScan {
  const skip = new Set([process.pid, ...(opts.excludePids ?? [])])
  const processes: ProcessInfo[] = []
  const unreadable: Unreadable[] = []
  let names: string[]
  try {
    names = io.readdir('/proc')
  } catch (err) {
    // Without /proc we cannot tell who uses a chroot: nothing may be deleted on that basis.
    throw new CleanerError('ESYS', `cannot list processes: ${describeSystemError(err)}`, { path: '/proc', syscall: 'scandir', cause: err })
  }
  const pids = names
    .filter((name) => /^[1-9][0-9]*$/.test(name))
    .map(Number)
    .filter((pid) => !skip.has(pid))
    .sort((a, b) => a - b)

  for (const pid of pids) {
    let gone = false
    const problems: Unreadable[] = []
    /** One read of one process: undefined when it vanished or failed (then noted). */
    const read = <T>(what: string, f: () => T): T | undefined => {
      if (gone) return undefined
      try {
        return f()
      } catch (err) {
        if (isVanished(err)) gone = what === 'comm' // no comm: the process is gone
        else problems.push({ pid, what, reason: describeSystemError(err) })
        return undefined
      }
    }
    const base = `/proc/${pid}`
    const command = read('comm', () => io.readFile(`${base}/comm`).trim())
    const rootStat = read('root', () => io.stat(`${base}/root`))
    const rootPath = rootStat && read('root', () => io.readlink(`${base}/root`))
    const cwd = read('cwd', () => io.readlink(`${base}/cwd`))
    // Kernel threads and zombies have no exe: ENOENT, not a problem.
    const exe = read('exe', () => io.readlink(`${base}/exe`))
    if (gone) continue
    unreadable.push(...problems)
    processes.push({
      pid,
      command: command ?? '?',
      ...(rootStat && rootPath !== undefined
        ? { root: { dev: rootStat.dev, ino: rootStat.ino, path: undeleted(rootPath) } }
        : {}),
      ...(cwd === undefined ? {} : { cwd: undeleted(cwd) }),
      ...(exe === undefined ? {} : { exe: undeleted(exe) }),
    })
  }
  return { processes, unreadable }
}

/**
 * For many chroots at once: a Map from each chroot's path to its users (empty when none).
 * One entry per (pid, chroot), with the first `how` that matches in the order root, cwd, exe.
 * Cost is O(processes × path depth): each process path walks up its own ancestors and looks
 * them up in a Map of chroot paths, so `/a/user2/x` never matches `/a/user`.
 */
export function usersOfChroots(scan: ProcessScan, chroots: readonly ChrootIdentity[]): Map<string, ChrootUse[]> {
  const users = new Map<string, ChrootUse[]>()
  const byIdentity = new Map<string, string[]>()
  for (const c of chroots) {
    users.set(c.path, [])
    const key = `${c.dev}:${c.ino}`
    byIdentity.set(key, [...(byIdentity.get(key) ?? []), c.path])
  }

  for (const p of scan.processes) {
    const found = new Map<string, ChrootUse['how']>()
    const note = (chroot: string, how: ChrootUse['how']): void => {
      if (!found.has(chroot)) found.set(chroot, how)
    }
    const noteAncestors = (path: string | undefined, how: ChrootUse['how']): void => {
      if (path === undefined || !path.startsWith('/')) return
      for (let at = path; ; ) {
        if (users.has(at)) note(at, how)
        if (at === '/') return
        const slash = at.lastIndexOf('/')
        at = slash === 0 ? '/' : at.slice(0, slash)
      }
    }
    if (p.root) for (const chroot of byIdentity.get(`${p.root.dev}:${p.root.ino}`) ?? []) note(chroot, 'root')
    noteAncestors(p.root?.path, 'root')
    noteAncestors(p.cwd, 'cwd')
    noteAncestors(p.exe, 'exe')
    for (const [chroot, how] of found) users.get(chroot)!.push({ pid: p.pid, command: p.command, how })
  }
  return users
}

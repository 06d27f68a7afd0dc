/**
 * Detaches every mount at or below a chroot without letting the unmount reach the host
 * (seed incident 1, INCIDENTS.md). A chroot's `/run` bind-mounted from a shared host `/run` is
 * in the host's peer groups: unmounting its children there also unmounts the host's copies
 * (users' /run/user/UID). So, as KERNEL-NOTES found safe:
 *   1. `mount --make-rprivate` on each top of the chroot's mounts (recursive: `--make-private`
 *      alone still lost a host mount), then re-read mountinfo: if anything below is still
 *      `shared` (e.g. a shared mount covered by an over-mount, which no path can reach),
 *      refuse before unmounting anything;
 *   2. `umount -l` each mount deepest-first (children and over-mounts before what they sit on);
 *   3. re-read mountinfo: nothing may be left.
 *
 * Chroot contents are hostile: a directory on the way to a mount point can be swapped for a
 * symlink to /run between reading mountinfo and running umount(8), which resolves paths. So we
 * never hand mount(8)/umount(8) the mount point's name. We open it with O_PATH|O_NOFOLLOW,
 * prove from /proc/self/fdinfo (`mnt_id:`) and the descriptor's link that the descriptor is the
 * root of that very mount, and pass `/proc/<our pid>/fd/<fd>` with --no-canonicalize. The
 * kernel resolves that magic link to the descriptor's own mount, whatever the names now say.
 * Verified here (util-linux 2.38.1, strace): `mount --make-rprivate --no-canonicalize P` issues
 * exactly mount("none", P, NULL, MS_REC|MS_PRIVATE) and `umount -l -i --no-canonicalize P`
 * exactly umount2(P, MNT_DETACH); libmount's lookup_umount_fs() skips statfs and finds no
 * mountinfo entry for P, so no umount.<type> helper (-i forbids them anyway) ever sees a path.
 * Without --no-canonicalize libmount would realpath() P back into a name, reopening the race.
 *
 * Cancellation is checked once, before the teardown starts: never half-way through it.
 */
import * as fs from 'node:fs'
import { CleanerError, describeSystemError, errnoOf } from './errors.js'
import type { Io } from './io.js'
import { silentLogger, type Logger } from './logger.js'
import { readMountTable, type Mount, type MountTable } from './mountinfo.js'

export interface DetachResult {
  /** Mount points unmounted, in order. */
  readonly detached: readonly string[]
}

const O_PATH = 0o10000000 // not in fs.constants; passed through to open(2) (KERNEL-NOTES)
const O_CLOEXEC = 0o2000000
/** Re-reads of mountinfo allowed when a mount point stops leading to its mount. */
const MAX_ROUNDS = 4

export async function detachMountsBelow(
  io: Io,
  chrootPath: string,
  opts: { log?: Logger; signal?: AbortSignal } = {},
): Promise<DetachResult> {
  const log = opts.log ?? silentLogger
  opts.signal?.throwIfAborted()
  assertCanonical(io, chrootPath)
  const detached: string[] = []
  let unreachable: Mount | undefined
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const table = readMountTable(io)
    const mine = table.below(chrootPath)
    if (mine.length === 0) return { detached }
    if (round > 0) log.debug(`${chrootPath}: a mount point no longer led to its mount, re-reading mountinfo (round ${round + 1})`)

    unreachable = await makePrivate(io, table, mine, log)
    if (unreachable) continue

    const fresh = readMountTable(io)
    const now = fresh.below(chrootPath)
    const shared = now.filter((m) => m.shared !== undefined)
    if (shared.length > 0) {
      const list = shared.map((m) => `${m.mountPoint} (mount ${m.id}, shared:${m.shared})`).join(', ')
      const done = detached.length === 0 ? 'nothing was unmounted' : `already detached: ${detached.join(', ')}`
      throw new CleanerError(
        'EUNMOUNT',
        `refusing to unmount below ${chrootPath}: still shared after make-rprivate, an unmount would propagate to the host: ${list} (covered by an over-mount?); ${done}`,
        { path: shared[0]!.mountPoint },
      )
    }
    unreachable = await unmountDeepestFirst(io, fresh.deepestFirst(now), detached, log)
  }
  const left = readMountTable(io).below(chrootPath)
  if (left.length === 0) return { detached }
  if (unreachable) {
    throw new CleanerError(
      'EUNMOUNT',
      `cannot reach the mount on ${unreachable.mountPoint} (mount ${unreachable.id}): its path kept leading to another mount or a symlink; not unmounted`,
      { path: unreachable.mountPoint },
    )
  }
  throw new CleanerError('EMOUNTED', `mounts remain below ${chrootPath}: ${left.map((m) => m.mountPoint).join(', ')}`, { path: chrootPath })
}

/** rprivate on the visible mount of each top; returns a mount whose path did not lead to it. */
async function makePrivate(io: Io, table: MountTable, mine: readonly Mount[], log: Logger): Promise<Mount | undefined> {
  for (const top of table.tops(mine)) {
    // Of a stack of mounts on one mount point only the last over-mount can be reached.
    let visible = top
    for (let over = coverOf(mine, visible); over; over = coverOf(mine, visible)) visible = over
    const reached = await onMount(io, visible, (target) =>
      mountTool(io, 'mount', ['--make-rprivate', '--no-canonicalize', target], visible, 'make-rprivate'),
    )
    if (!reached) return visible
    log.debug(`made ${visible.mountPoint} (mount ${visible.id}) and everything below it private`)
  }
  return undefined
}

function coverOf(mounts: readonly Mount[], m: Mount): Mount | undefined {
  return mounts.find((o) => o.parentId === m.id && o.mountPoint === m.mountPoint)
}

async function unmountDeepestFirst(io: Io, order: readonly Mount[], detached: string[], log: Logger): Promise<Mount | undefined> {
  for (const m of order) {
    const reached = await onMount(io, m, (target) => mountTool(io, 'umount', ['-l', '-i', '--no-canonicalize', target], m, 'umount'))
    if (!reached) return m
    detached.push(m.mountPoint)
    log.info(`detached ${m.mountPoint} (mount ${m.id})`)
  }
  return undefined
}

/**
 * Runs `action` on `/proc/<pid>/fd/<fd>` of a descriptor proven to be the root of mount `m`.
 * False (nothing done) when the path now leads elsewhere: gone, a symlink, another mount.
 */
async function onMount(io: Io, m: Mount, action: (target: string) => Promise<void>): Promise<boolean> {
  let fd: number
  try {
    fd = io.open(m.mountPoint, O_PATH | fs.constants.O_NOFOLLOW | O_CLOEXEC)
  } catch (err) {
    const code = errnoOf(err)
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return false
    throw new CleanerError('EUNMOUNT', `cannot open mount point ${m.mountPoint}: ${describeSystemError(err)}`, {
      path: m.mountPoint,
      syscall: 'open',
      cause: err,
    })
  }
  try {
    // Same mount id and the descriptor's path is the mount point itself: it is that mount's root.
    if (readMountId(io, fd) !== m.id || io.readlink(`/proc/self/fd/${fd}`) !== m.mountPoint) return false
    await action(`/proc/${process.pid}/fd/${fd}`)
    return true
  } finally {
    io.close(fd)
  }
}

async function mountTool(io: Io, tool: string, args: readonly string[], m: Mount, what: string): Promise<void> {
  const r = await io.run(tool, args)
  if (r.exitCode === 0) return
  const why = r.failure ?? `exit ${r.exitCode}: ${r.stderr.trim() || '(no message)'}`
  throw new CleanerError('EUNMOUNT', `${what} ${m.mountPoint} (mount ${m.id}) failed: ${why}`, { path: m.mountPoint, syscall: what })
}

/**
 * mountinfo names mounts by their real paths: a chroot path through a symlink would match no
 * mount and its leaked mounts would look absent. Refuse it instead.
 */
function assertCanonical(io: Io, chrootPath: string): void {
  let fd: number
  try {
    fd = io.open(chrootPath, O_PATH | O_CLOEXEC) // following every symlink: we only read where it leads
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return // gone: mountinfo alone decides
    throw new CleanerError('ESYS', `cannot open ${chrootPath}: ${describeSystemError(err)}`, { path: chrootPath, syscall: 'open', cause: err })
  }
  try {
    const real = io.readlink(`/proc/self/fd/${fd}`)
    if (real !== chrootPath) {
      throw new CleanerError('EREFUSED', `refusing to detach mounts below ${chrootPath}: it is really ${real}; give the canonical path`, {
        path: chrootPath,
      })
    }
  } finally {
    io.close(fd)
  }
}

/** The mount id of an open descriptor (`mnt_id:` in /proc/self/fdinfo), as mountinfo numbers mounts. */
export function readMountId(io: Io, fd: number): number {
  const file = `/proc/self/fdinfo/${fd}`
  let text: string
  try {
    text = io.readFile(file)
  } catch (err) {
    throw new CleanerError('ESYS', `cannot read ${file}: ${describeSystemError(err)}`, { path: file, syscall: 'open', cause: err })
  }
  const id = /^mnt_id:\s*(\d+)$/m.exec(text)
  if (!id) throw new CleanerError('EPARSE', `${file}: no "mnt_id:" line: ${JSON.stringify(text.slice(0, 200))}`, { path: file })
  return Number(id[1])
}

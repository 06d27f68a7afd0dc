/**
 * btrfs subvolumes in a chroot (devtools makes copies as snapshots; systemd creates
 * /var/lib/machines and /var/lib/portables as nested subvolumes). A subvolume root has inode 256
 * and its own st_dev but is no mount, so the one-filesystem remover rightly stops at it; it has
 * to go through `btrfs subvolume delete`, deepest-first: btrfs-progs 6.2 has no --recursive and
 * a parent with a nested subvolume fails "Directory not empty" (KERNEL-NOTES "btrfs").
 *
 * Race safety. The chroot is hostile, so no path inside it may be handed to btrfs(8):
 * cmds/subvolume.c (v6.2) cmd_subvolume_delete() calls realpath() on its argument, then opens
 * dirname() of the resulting *name* and issues BTRFS_IOC_SNAP_DESTROY with basename(). Even
 * `/proc/<pid>/fd/<dirfd>/<name>` is turned back into a name by realpath() (seen with strace),
 * so a directory swapped for a symlink in between would redirect the delete. Instead:
 *   - walk from the chroot to the subvolume ourselves, one component at a time, each opened
 *     with O_NOFOLLOW|O_DIRECTORY relative to the previous descriptor (`/proc/self/fd/N/name`),
 *     each on the chroot's own mount (fdinfo `mnt_id`: no bind mount is crossed);
 *   - ask `btrfs inspect-internal rootid /proc/<pid>/fd/<fd>` for the subvolume id of the
 *     descriptor we hold (cmd_inspect_rootid opens its argument as given: the magic link
 *     resolves to our descriptor) and require it to be the id listed for that path;
 *   - delete by id: `btrfs subvolume delete --subvolid ID ANCHOR` (BTRFS_IOC_SNAP_DESTROY_V2
 *     by id). The path ANCHOR only picks the filesystem; it is the nearest subvolume root at or
 *     above the chroot, on the chroot's mount: outside the hostile contents, so it cannot be
 *     swapped. Subvolume ids are never reused, so the id names exactly the object we verified.
 * The chroot's own subvolume (includeSelf) is deleted by its path, which is trusted the same way.
 * When btrfs fails we throw; there is no fallback to any other way of deleting.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { CleanerError, describeSystemError, errnoOf, isVanished } from './errors.js'
import type { Io, RunResult } from './io.js'
import { silentLogger, type Logger } from './logger.js'
import { readMountTable } from './mountinfo.js'
import { depthOf, isAtOrBelow, isStrictlyBelow } from './paths.js'
import { readMountId } from './unmount.js'

const BTRFS_SUPER_MAGIC = 0x9123683e
const SUBVOLUME_ROOT_INO = 256
const O_CLOEXEC = 0o2000000
const O_PATH = 0o10000000
const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW } = fs.constants
const DIR_FLAGS = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC

/** True when `path` is on btrfs (statfs f_type). */
export function isBtrfs(io: Io, path: string): boolean {
  try {
    return io.statfs(path).type === BTRFS_SUPER_MAGIC
  } catch (err) {
    throw new CleanerError('ESYS', `cannot statfs ${path}: ${describeSystemError(err)}`, { path, syscall: 'statfs', cause: err })
  }
}

export interface Subvolume {
  readonly id: number
  readonly path: string
}

/** Nested subvolumes strictly below `path` (absolute paths), deepest first. */
export async function findSubvolumesBelow(io: Io, path: string): Promise<string[]> {
  return (await subvolumesBelow(io, path)).map((s) => s.path)
}

async function subvolumesBelow(io: Io, dir: string): Promise<Subvolume[]> {
  if (!isBtrfs(io, dir)) return []
  const table = readMountTable(io)
  const fd = openDir(io, dir)
  let listing: Subvolume[]
  let real: string
  let mountId: number
  try {
    mountId = readMountId(io, fd)
    real = io.readlink(`/proc/self/fd/${fd}`)
    // One listing of the whole filesystem (-a: every path relative to its top level).
    const r = await btrfs(io, ['subvolume', 'list', '-a', `/proc/${process.pid}/fd/${fd}`], dir, 'subvolume list')
    listing = parseSubvolumeList(r.stdout)
  } finally {
    io.close(fd)
  }
  const mount = table.byId(mountId)
  if (!mount) throw new CleanerError('EBTRFS', `${dir}: its mount ${mountId} is not in mountinfo`, { path: dir })
  const mountPoints = table.mountPoints()
  const found: Subvolume[] = []
  for (const s of listing) {
    const topPath = '/' + s.path
    if (!isAtOrBelow(topPath, mount.root)) continue // not visible through this mount
    const abs = joinBelow(mount.mountPoint, mount.root === '/' ? topPath : topPath.slice(mount.root.length))
    if (!isStrictlyBelow(abs, real)) continue
    const shown = dir + abs.slice(real.length) // the caller's spelling of the same place
    if (!mountPoints.has(abs) && isSubvolumeRoot(io, shown)) found.push({ id: s.id, path: shown })
  }
  return found.sort((a, b) => depthOf(b.path) - depthOf(a.path) || (a.path < b.path ? 1 : a.path > b.path ? -1 : 0))
}

/** lstat check of a listed path (not a mount point): a directory, inode 256, its own st_dev. */
function isSubvolumeRoot(io: Io, p: string): boolean {
  try {
    const st = io.lstat(p)
    return st.isDirectory() && st.ino === SUBVOLUME_ROOT_INO && st.dev !== io.lstat(path.dirname(p)).dev
  } catch (err) {
    if (isVanished(err)) return false
    throw new CleanerError('ESYS', `cannot lstat ${p}: ${describeSystemError(err)}`, { path: p, syscall: 'lstat', cause: err })
  }
}

const LIST_LINE = /^ID (\d+) gen \d+ top level \d+ path (.+)$/

/** `btrfs subvolume list -a` output; a line that does not parse is an EPARSE error naming it. */
export function parseSubvolumeList(text: string): Subvolume[] {
  const lines = text.split('\n')
  if (lines[lines.length - 1] === '') lines.pop()
  return lines.map((line, i) => {
    const m = LIST_LINE.exec(line)
    if (!m) throw new CleanerError('EPARSE', `btrfs subvolume list line ${i + 1}: ${JSON.stringify(line.slice(0, 300))}`)
    return { id: Number(m[1]), path: m[2]!.replace(/^<FS_TREE>\//, '') }
  })
}

function joinBelow(mountPoint: string, rest: string): string {
  if (rest === '' || rest === '/') return mountPoint
  return mountPoint === '/' ? rest : mountPoint + rest
}

/**
 * Deletes the nested subvolumes below `chrootPath`, deepest first, then the chroot's own
 * subvolume when `includeSelf`. Stops at the first failure (EBTRFS), deleting nothing else.
 */
export async function deleteSubvolumes(
  io: Io,
  chrootPath: string,
  opts: { includeSelf: boolean; log?: Logger } = { includeSelf: false },
): Promise<{ deleted: string[] }> {
  const log = opts.log ?? silentLogger
  if (!isBtrfs(io, chrootPath)) {
    if (opts.includeSelf) throw new CleanerError('EBTRFS', `${chrootPath} is not on btrfs: no subvolume to delete`, { path: chrootPath })
    return { deleted: [] }
  }
  const root = openDir(io, chrootPath)
  const deleted: string[] = []
  let rootSt: fs.Stats
  try {
    const rootMount = readMountId(io, root)
    rootSt = io.fstat(root)
    if (opts.includeSelf) assertSelfDeletable(io, chrootPath, rootSt)
    const nested = await subvolumesBelow(io, chrootPath)
    const anchor = nested.length > 0 ? anchorOf(io, io.readlink(`/proc/self/fd/${root}`), rootMount) : ''
    for (const sub of nested) {
      const id = await verifiedId(io, root, rootMount, chrootPath, sub.path)
      if (id === undefined) {
        log.debug(`nested btrfs subvolume ${sub.path} vanished before we got to it`)
        continue
      }
      if (id !== sub.id) {
        throw new CleanerError('EBTRFS', `${sub.path} changed while deleting: listed as subvolume ${sub.id}, now ${id}; nothing more deleted`, {
          path: sub.path,
        })
      }
      await btrfs(io, ['subvolume', 'delete', '--commit-after', '--subvolid', String(id), anchor], sub.path, 'subvolume delete')
      deleted.push(sub.path)
      log.info(`deleted nested btrfs subvolume ${sub.path} (id ${id})`)
    }
  } finally {
    io.close(root)
  }
  if (opts.includeSelf) {
    const st = io.lstat(chrootPath)
    if (st.dev !== rootSt.dev || st.ino !== rootSt.ino) {
      throw new CleanerError('EBTRFS', `${chrootPath} was replaced while deleting its nested subvolumes; not deleted`, { path: chrootPath })
    }
    assertSelfDeletable(io, chrootPath, st)
    await btrfs(io, ['subvolume', 'delete', '--commit-after', chrootPath], chrootPath, 'subvolume delete')
    deleted.push(chrootPath)
    log.info(`deleted btrfs subvolume ${chrootPath}`)
  }
  return { deleted }
}

function assertSelfDeletable(io: Io, chrootPath: string, st: fs.Stats): void {
  if (st.ino !== SUBVOLUME_ROOT_INO || !st.isDirectory()) {
    throw new CleanerError('EBTRFS', `${chrootPath} is not a btrfs subvolume (inode ${st.ino}); refusing to delete it as one`, { path: chrootPath })
  }
  if (readMountTable(io).mountPoints().has(chrootPath)) {
    throw new CleanerError('EBTRFS', `${chrootPath} is a mount point; refusing to delete its subvolume`, { path: chrootPath })
  }
}

/**
 * The subvolume id of `subPath`, reached from the chroot's descriptor without symlinks or mount
 * crossings; undefined when it vanished (ENOENT).
 */
async function verifiedId(io: Io, root: number, rootMount: number, chrootPath: string, subPath: string): Promise<number | undefined> {
  const names = subPath.slice(chrootPath.length + 1).split('/')
  const opened: number[] = []
  const fail = (why: string): CleanerError =>
    new CleanerError('EBTRFS', `refusing to delete ${subPath}: ${why}; nothing more deleted`, { path: subPath })
  try {
    let dir = root
    let sub = root
    for (const name of names) {
      if (name === '' || name === '.' || name === '..') throw fail(`bad path component ${JSON.stringify(name)}`)
      dir = sub
      try {
        sub = io.open(`/proc/self/fd/${dir}/${name}`, DIR_FLAGS)
      } catch (err) {
        const code = errnoOf(err)
        if (code === 'ENOENT') return undefined
        if (code === 'ELOOP' || code === 'ENOTDIR') throw fail(`${name} is no longer a directory (a symlink?)`)
        throw fail(describeSystemError(err))
      }
      opened.push(sub)
      if (readMountId(io, sub) !== rootMount) throw fail(`${name} is on another mount`)
    }
    const st = io.fstat(sub)
    if (st.ino !== SUBVOLUME_ROOT_INO || st.dev === io.fstat(dir).dev) throw fail('it is no longer a subvolume root')
    const r = await btrfs(io, ['inspect-internal', 'rootid', `/proc/${process.pid}/fd/${sub}`], subPath, 'inspect-internal rootid')
    const id = r.stdout.trim()
    if (!/^\d+$/.test(id)) throw new CleanerError('EPARSE', `btrfs inspect-internal rootid ${subPath}: ${JSON.stringify(id)}`, { path: subPath })
    return Number(id)
  } finally {
    for (const fd of opened) io.close(fd)
  }
}

/**
 * The nearest subvolume root at or above the chroot (its real path) on the chroot's mount: a
 * trusted path that tells `btrfs subvolume delete --subvolid` which filesystem to act on.
 */
function anchorOf(io: Io, chrootReal: string, rootMount: number): string {
  for (let p = chrootReal; ; p = path.dirname(p)) {
    const fd = io.open(p, O_PATH | O_NOFOLLOW | O_CLOEXEC)
    try {
      if (readMountId(io, fd) !== rootMount) break
      const st = io.fstat(fd)
      if (st.isDirectory() && st.ino === SUBVOLUME_ROOT_INO) return p
    } finally {
      io.close(fd)
    }
    if (p === '/') break
  }
  throw new CleanerError('EBTRFS', `no btrfs subvolume root at or above ${chrootReal} on its mount: cannot address its nested subvolumes`, {
    path: chrootReal,
  })
}

function openDir(io: Io, dir: string): number {
  try {
    return io.open(dir, DIR_FLAGS)
  } catch (err) {
    throw new CleanerError('ESYS', `cannot open ${dir}: ${describeSystemError(err)}`, { path: dir, syscall: 'open', cause: err })
  }
}

async function btrfs(io: Io, args: readonly string[], subject: string, what: string): Promise<RunResult> {
  const r = await io.run('btrfs', args)
  if (r.exitCode === 0) return r
  if (r.failure !== undefined && /ENOENT/.test(r.failure)) {
    throw new CleanerError('EBTRFS', `btrfs-progs not installed (no btrfs in PATH): cannot handle subvolumes at ${subject}`, { path: subject })
  }
  const why = r.failure ?? `exit ${r.exitCode}: ${r.stderr.trim() || '(no message)'}`
  throw new CleanerError('EBTRFS', `btrfs ${what} ${subject} failed: ${why}`, { path: subject, syscall: `btrfs ${what}` })
}

/**
 * Finds devtools chroots: `<build root>/<group>/root` (the master, with `root.lock`) and the
 * copies `<group>/<name>` (with `<name>.lock`). Read-only: this runs in the dry run too, so it
 * never creates, writes, opens or locks anything below a build root; lock files are lstat'ed.
 *
 * Symlinks are never followed (ARCHITECTURE: hostile trees). fast-glob follows them by default,
 * so it is called with `followSymbolicLinks: false` and one level deep per directory; every
 * entry it names is then lstat'ed through the `Io` seam. A symlink where a group or a chroot
 * should be is refused, and whatever it points at is not even stat'ed.
 */
import * as nodePath from 'node:path'
import * as fs from 'node:fs'
import fg from 'fast-glob'
import type { Io } from './io.js'
import { CleanerError, describeSystemError, errnoOf, isVanished } from './errors.js'

export interface ChrootFacts {
  /** Absolute canonical: buildRoot/group/name. */
  readonly path: string
  readonly buildRoot: string
  readonly group: string
  readonly name: string
  readonly kind: 'root' | 'copy'
  readonly dev: number
  readonly ino: number
  readonly lockFile: { readonly path: string; readonly dev: number; readonly ino: number } | undefined
  /** ms since epoch: newest mtime of the chroot dir, its lock file and its top-level entries (lstat). */
  readonly lastUsed: number
  /** On btrfs and inode 256: a subvolume root, deleted with `btrfs subvolume delete`. */
  readonly btrfsSubvolume: boolean
  readonly fsType: 'btrfs' | 'other'
}

export interface Refusal {
  readonly path: string
  readonly reason: string
}

export interface Discovery {
  readonly buildRoots: readonly string[]
  /** Absolute paths of the group directories, including those holding no chroot. */
  readonly groups: readonly string[]
  readonly chroots: readonly ChrootFacts[]
  readonly refused: readonly Refusal[]
}

const BTRFS_SUPER_MAGIC = 0x9123683e
const BTRFS_SUBVOLUME_INO = 256
const O_PATH = 0o10000000
const SYMLINK_REFUSED = 'symlink: not followed'

/**
 * Validates a --build-root value and returns its absolute canonical path. Its parents may be
 * symlinks (/var/lib → /srv/lib); the build root itself may not. Opening it O_PATH|O_NOFOLLOW
 * checks "not a symlink", "a directory" and the canonical path on one and the same inode.
 */
export function validateBuildRoot(io: Io, input: string): string {
  const refuse = (why: string, cause?: unknown): never => {
    throw new CleanerError('EPATH', `build root ${JSON.stringify(input)} ${why}`, { path: input, cause })
  }
  if (input === '') refuse('is empty')
  const absolute = nodePath.resolve(input)
  let fd: number
  try {
    fd = io.open(absolute, O_PATH | fs.constants.O_NOFOLLOW)
  } catch (err) {
    const code = errnoOf(err)
    if (code === 'ENOENT') return refuse('does not exist')
    if (code === 'ENOTDIR') return refuse('is not a directory (a parent of it is not one)', err)
    return refuse(`cannot be opened: ${describeSystemError(err)}`, err)
  }
  try {
    const st = io.fstat(fd)
    if (st.isSymbolicLink()) refuse('is a symlink: name the directory it points to, symlinks are not followed')
    if (!st.isDirectory()) refuse('is not a directory')
    const canonical = io.readlink(`/proc/self/fd/${fd}`)
    if (canonical === '/') refuse('is /: name the directory holding the chroot groups, like /var/lib/archbuild')
    if (!canonical.startsWith('/')) refuse(`has no canonical path (kernel says ${JSON.stringify(canonical)})`)
    return canonical
  } finally {
    io.close(fd)
  }
}

/** The names one level below `dir`, never following symlinks (fast-glob suppresses ENOENT). */
async function namesIn(dir: string): Promise<string[]> {
  const names = await fg('*', { cwd: dir, deep: 1, onlyFiles: false, dot: true, followSymbolicLinks: false })
  return names.sort()
}

/** lstat that tolerates only a vanished entry. */
function lstatOrGone(io: Io, path: string): fs.Stats | undefined {
  try {
    return io.lstat(path)
  } catch (err) {
    if (isVanished(err)) return undefined
    throw err
  }
}

/**
 * Last use = the newest mtime of the chroot directory, its lock file and its top-level entries
 * (`build/`, `startdir/`… change with every build). lstat only: a hostile top-level symlink's
 * target never counts. Throws on anything but a vanished entry (the chroot itself vanishing
 * throws ENOENT too).
 */
export function lastUseOf(io: Io, path: string, dir: fs.Stats, lock: fs.Stats | undefined): number {
  let lastUsed = Math.max(dir.mtimeMs, lock?.mtimeMs ?? 0)
  for (const entry of io.readdir(path)) {
    try {
      lastUsed = Math.max(lastUsed, io.lstat(`${path}/${entry}`).mtimeMs)
    } catch (err) {
      if (!isVanished(err)) throw err
    }
  }
  return lastUsed
}

type Found = { chroot: ChrootFacts } | { refusal: Refusal } | undefined

function examineChroot(io: Io, buildRoot: string, group: string, name: string, st: fs.Stats): Found {
  const path = `${buildRoot}/${group}/${name}`
  const lockPath = `${path}.lock`
  const lock = lstatOrGone(io, lockPath)
  if (lock?.isSymbolicLink()) return { refusal: { path: lockPath, reason: `lock file is a ${SYMLINK_REFUSED}` } }
  if (lock && !lock.isFile()) return { refusal: { path: lockPath, reason: 'lock file is not a regular file' } }

  let lastUsed: number
  try {
    lastUsed = lastUseOf(io, path, st, lock)
  } catch (err) {
    if (isVanished(err)) return undefined
    return { refusal: { path, reason: `cannot tell when it was last used: ${describeSystemError(err)}` } }
  }

  const fsType = io.statfs(path).type === BTRFS_SUPER_MAGIC ? 'btrfs' : 'other'
  return {
    chroot: {
      path,
      buildRoot,
      group,
      name,
      kind: name === 'root' ? 'root' : 'copy',
      dev: st.dev,
      ino: st.ino,
      lockFile: lock ? { path: lockPath, dev: lock.dev, ino: lock.ino } : undefined,
      lastUsed,
      btrfsSubvolume: fsType === 'btrfs' && st.ino === BTRFS_SUBVOLUME_INO,
      fsType,
    },
  }
}

/**
 * Every group and chroot below the build roots (validated again here, so each is canonical).
 * A failure on one entry is refused with its reason; only a vanished entry is dropped silently.
 */
export async function discover(io: Io, buildRoots: readonly string[]): Promise<Discovery> {
  const roots = [...new Set(buildRoots.map((r) => validateBuildRoot(io, r)))]
  const groups: string[] = []
  const chroots: ChrootFacts[] = []
  const refused: Refusal[] = []
  const tryEntry = (path: string, f: () => void): void => {
    try {
      f()
    } catch (err) {
      if (!isVanished(err)) refused.push({ path, reason: describeSystemError(err) })
    }
  }

  for (const buildRoot of roots) {
    let groupNames: string[]
    try {
      groupNames = await namesIn(buildRoot)
    } catch (err) {
      throw new CleanerError('ESYS', `cannot list build root ${buildRoot}: ${describeSystemError(err)}`, { path: buildRoot, cause: err })
    }
    for (const group of groupNames) {
      const groupPath = `${buildRoot}/${group}`
      let isGroup = false
      tryEntry(groupPath, () => {
        const st = lstatOrGone(io, groupPath)
        if (st?.isSymbolicLink()) refused.push({ path: groupPath, reason: SYMLINK_REFUSED })
        isGroup = st?.isDirectory() ?? false
      })
      if (!isGroup) continue
      groups.push(groupPath)
      let names: string[]
      try {
        names = await namesIn(groupPath)
      } catch (err) {
        refused.push({ path: groupPath, reason: `cannot list it: ${describeSystemError(err)}` })
        continue
      }
      for (const name of names) {
        if (name.endsWith('.lock')) continue // a lock file, looked up by its chroot
        const path = `${groupPath}/${name}`
        tryEntry(path, () => {
          const st = lstatOrGone(io, path)
          if (st?.isSymbolicLink()) refused.push({ path, reason: SYMLINK_REFUSED })
          if (!st?.isDirectory()) return // vanished, a symlink, or a stray file
          const found = examineChroot(io, buildRoot, group, name, st)
          if (found && 'chroot' in found) chroots.push(found.chroot)
          if (found && 'refusal' in found) refused.push(found.refusal)
        })
      }
    }
  }
  return { buildRoots: roots, groups, chroots, refused }
}

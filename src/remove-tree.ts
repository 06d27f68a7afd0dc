/**
 * The one-filesystem, race-safe recursive delete (seed incident 2: a cleanup script walked
 * into a /run mounted inside a chroot and deleted the host's D-Bus socket).
 *
 * - `rm --one-file-system` compares st_dev only, so it walks through a bind mount of the same
 *   filesystem. Every directory we enter must have the root's st_dev AND the root's mount id
 *   (`mnt_id` in fdinfo: a bind mount has its own) and must not be a known mount point.
 *   For the root itself only the mount id decides: a btrfs subvolume root has its own st_dev.
 * - The tree is hostile and may change under us: everything goes through fds (dir-ops.ts),
 *   directories are opened with O_NOFOLLOW|O_DIRECTORY, so a directory swapped for a symlink
 *   fails to open and the symlink itself is unlinked; a file swapped for a directory fails
 *   unlink (EISDIR) and is entered, verified like any other directory. Flips are bounded.
 * - Streaming and bounded: two fds per level of depth (the directory and its listing), never
 *   the whole tree in memory; an explicit stack, so a hostile depth ends in a reported EMFILE,
 *   not a stack overflow.
 * - Vanished entries (ENOENT) are fine; anything else is recorded with path, syscall and code
 *   and the walk goes on with the siblings.
 *
 * `Removal` holds the per-directory logic (verify, remove an entry, finish a directory) apart
 * from the order of the walk, so that another walker (a parallel one) can share it.
 */
import { CleanerError, errnoOf } from './errors.js'
import { isStrictlyBelow } from './paths.js'
import { forgetCwd, isPlainName, preservingCwd, preservingCwdAsync, systemDirOps, type DirOps, type EntryName, type EntryType } from './dir-ops.js'

export interface RemoveOptions {
  /** Mount points from a fresh mountinfo read; none of them is entered or removed. */
  readonly mountPoints: ReadonlySet<string>
  /** The identity the root must still have (from the snapshot that planned this removal). */
  readonly expect?: { dev: number; ino: number }
  readonly ops?: DirOps
  readonly signal?: AbortSignal
  readonly onProgress?: (p: { entries: number }) => void
}

export interface RemoveProblem {
  readonly path: string
  readonly syscall: string
  readonly code: string
  readonly message: string
}

export interface RemoveResult {
  /** True only if the root itself is gone and nothing was skipped or failed. */
  readonly ok: boolean
  /** Entries removed (files, links, directories). */
  readonly entries: number
  /** Boundaries not entered (code 'EXDEV' or 'EMOUNTPOINT'), in rm's words. */
  readonly skipped: readonly RemoveProblem[]
  readonly errors: readonly RemoveProblem[]
}

const MAX_RESCANS = 3 // rmdir said ENOTEMPTY although we removed everything we saw
const MAX_FLIPS = 3 // dir ↔ non-dir swaps of one entry
const TICK_ENTRIES = 256
const PROGRESS_MS = 100

/** One open directory being emptied. */
export interface Frame {
  readonly fd: number
  readonly parentFd: number
  readonly name: EntryName
  readonly path: string
  readonly ino: number
  /** The frame of the parent directory; undefined for the root. */
  readonly up: Frame | undefined
  /** Some mount point lies below: only then are entry paths looked up in `mountPoints`. */
  readonly mountsBelow: boolean
  readonly rescans: number
  cursor: Iterator<{ name: EntryName; type: EntryType }> | undefined
  /** A problem was recorded inside: an rmdir ENOTEMPTY here is its consequence, not news. */
  blocked: boolean
}

/** A failed syscall as a problem; an error without an errno-style code is a bug and is rethrown. */
function problem(path: string, syscall: string, err: unknown): RemoveProblem {
  const code = errnoOf(err)
  if (code === undefined) throw err
  const sc = (err as { syscall?: unknown }).syscall
  const call = typeof sc === 'string' && !sc.startsWith('uv_') ? sc : syscall
  return { path, syscall: call, code, message: `${call} '${path}': ${code}` }
}

const display = (name: EntryName): string => (typeof name === 'string' ? name : name.toString('utf8'))

export class Removal {
  entries = 0
  rootGone = false
  readonly skipped: RemoveProblem[] = []
  readonly errors: RemoveProblem[] = []
  private readonly aboveMounts = new Set<string>()
  private sinceTick = 0
  private lastProgress = Date.now()

  constructor(
    readonly ops: DirOps,
    readonly root: { readonly path: string; readonly dev: number; readonly mountId: number },
    private readonly options: RemoveOptions,
  ) {
    for (const mp of options.mountPoints) {
      if (!isStrictlyBelow(mp, root.path)) continue
      for (let p = mp.slice(0, mp.lastIndexOf('/')); p.length >= root.path.length; p = p.slice(0, p.lastIndexOf('/'))) {
        this.aboveMounts.add(p)
      }
    }
  }

  get cancelled(): boolean {
    return this.options.signal?.aborted === true
  }

  result(): RemoveResult {
    const ok = this.rootGone && this.skipped.length === 0 && this.errors.length === 0
    return { ok, entries: this.entries, skipped: this.skipped, errors: this.errors }
  }

  /** Records a failed syscall. Errors without an errno-style code are bugs and are rethrown. */
  fail(path: string, syscall: string, err: unknown): void {
    this.errors.push(problem(path, syscall, err))
  }

  /** A boundary not entered, in rm's words; `syscall` names what found it (fstat, fdinfo, mountinfo). */
  skip(path: string, code: 'EXDEV' | 'EMOUNTPOINT', syscall: string): void {
    const why = code === 'EXDEV' ? "it's on a different device" : "it's a mount point"
    this.skipped.push({ path, syscall, code, message: `skipping '${path}', since ${why}` })
  }

  cancel(): void {
    const path = this.root.path
    this.errors.push({ path, syscall: 'removeTree', code: 'ECANCELED', message: `cancelled: '${path}' was not removed completely` })
  }

  private count(): void {
    this.entries++
    if (++this.sinceTick < TICK_ENTRIES) return
    this.sinceTick = 0
    const now = Date.now()
    if (this.options.onProgress && now - this.lastProgress >= PROGRESS_MS) {
      this.lastProgress = now
      this.options.onProgress({ entries: this.entries })
    }
  }

  /**
   * Wraps an open directory fd in a frame if it may be entered: a directory with the root's
   * st_dev and mount id (and, for a root rescan, the root's inode). Otherwise it is closed,
   * the skip or failure is recorded against `up`, and undefined comes back.
   */
  frame(fd: number, parentFd: number, name: EntryName, path: string, up: Frame | undefined, rescans: number, ino?: number): Frame | undefined {
    let refused: 'EXDEV' | 'EMOUNTPOINT' | 'ENOTDIR' | 'ESTALE' | undefined
    let st: { dev: number; ino: number; isDirectory: boolean }
    try {
      st = this.ops.fstat(fd)
      if (!st.isDirectory) refused = 'ENOTDIR'
      else if (st.dev !== this.root.dev) refused = 'EXDEV'
      else if (this.ops.mountId(fd) !== this.root.mountId) refused = 'EMOUNTPOINT'
      else if (ino !== undefined && st.ino !== ino) refused = 'ESTALE'
    } catch (err) {
      this.ops.close(fd)
      if (up) up.blocked = true
      this.fail(path, 'fstat', err)
      return undefined
    }
    if (refused !== undefined) {
      this.ops.close(fd)
      if (up) up.blocked = true
      if (refused === 'EXDEV' || refused === 'EMOUNTPOINT') this.skip(path, refused, refused === 'EXDEV' ? 'fstat' : 'fdinfo')
      else this.fail(path, 'open', { code: refused, syscall: 'open' })
      return undefined
    }
    const mountsBelow = (up === undefined || up.mountsBelow) && this.aboveMounts.has(path)
    return { fd, parentFd, name, path, ino: st.ino, up, mountsBelow, rescans, cursor: undefined, blocked: false }
  }

  /** Removes one listed entry of `dir`, or opens it as the next directory to empty. */
  step(dir: Frame, name: EntryName, listed: EntryType): Frame | undefined {
    const path = `${dir.path}/${display(name)}`
    if (!isPlainName(name)) {
      dir.blocked = true
      this.fail(path, 'readdir', { code: 'EINVAL' })
      return undefined
    }
    if (dir.mountsBelow && this.options.mountPoints.has(path)) {
      dir.blocked = true
      this.skip(path, 'EMOUNTPOINT', 'mountinfo')
      return undefined
    }
    let type = listed
    for (let flips = 0; flips <= MAX_FLIPS; flips++) {
      let syscall = 'lstat'
      try {
        if (type === 'unknown') type = this.ops.lstatType(dir.fd, name)
        if (type === 'dir') {
          syscall = 'open'
          const fd = this.ops.openDir(dir.fd, name)
          return this.frame(fd, dir.fd, name, path, dir, 0)
        }
        syscall = 'unlink'
        this.ops.unlink(dir.fd, name)
        this.count()
        return undefined
      } catch (err) {
        const code = errnoOf(err)
        if (code === 'ENOENT') return undefined
        if (syscall === 'open' && (code === 'ENOTDIR' || code === 'ELOOP')) type = 'file' // swapped for a symlink or file
        else if (syscall === 'unlink' && (code === 'EISDIR' || (code === 'EPERM' && this.isDirNow(dir, name)))) type = 'dir'
        else {
          dir.blocked = true
          this.fail(path, syscall, err)
          return undefined
        }
      }
    }
    dir.blocked = true
    this.fail(path, 'unlink', { code: 'ELOOP', syscall: 'unlink' }) // kept changing between directory and not
    return undefined
  }

  /** unlink(2) says EPERM both for a directory (POSIX) and for an immutable file: tell them apart. */
  private isDirNow(dir: Frame, name: EntryName): boolean {
    try {
      return this.ops.lstatType(dir.fd, name) === 'dir'
    } catch {
      return false
    }
  }

  /** Closes the listing of a frame and keeps its fd (idempotent). */
  endListing(dir: Frame): void {
    const it = dir.cursor
    dir.cursor = undefined
    it?.return?.()
  }

  /** Closes the listing and the fd of a frame (idempotent for the listing). */
  release(dir: Frame): void {
    try {
      this.endListing(dir)
    } finally {
      this.ops.close(dir.fd)
    }
  }

  /**
   * Called once `dir` is listed to the end and released: rmdir it through its parent. If it
   * is not empty although nothing failed inside, something appeared meanwhile: returns a new
   * frame to list it again (bounded). A directory left non-empty by a problem already
   * recorded inside is not reported again (a hostile depth would repeat it per level).
   */
  finish(dir: Frame): Frame | undefined {
    try {
      this.ops.rmdir(dir.parentFd, dir.name)
      this.count()
      if (!dir.up) this.rootGone = true
      return undefined
    } catch (err) {
      const code = errnoOf(err)
      if (code === 'ENOENT') {
        if (!dir.up) this.rootGone = true
        return undefined
      }
      const notEmpty = code === 'ENOTEMPTY' || code === 'EEXIST'
      if (notEmpty && !dir.blocked && dir.rescans < MAX_RESCANS && !this.cancelled) return this.reopen(dir)
      if (dir.up) dir.up.blocked = true
      if (!(notEmpty && dir.blocked)) this.fail(dir.path, 'rmdir', err)
      return undefined
    }
  }

  private reopen(dir: Frame): Frame | undefined {
    let fd: number
    try {
      fd = this.ops.openDir(dir.parentFd, dir.name)
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return undefined
      if (dir.up) dir.up.blocked = true
      this.fail(dir.path, 'open', err)
      return undefined
    }
    return this.frame(fd, dir.parentFd, dir.name, dir.path, dir.up, dir.rescans + 1, dir.up ? undefined : dir.ino)
  }

  /** Starts the listing of a frame; false (recorded) when it cannot be listed. */
  list(dir: Frame): boolean {
    try {
      dir.cursor = this.ops.list(dir.fd)[Symbol.iterator]()
      return true
    } catch (err) {
      dir.blocked = true
      this.fail(dir.path, 'opendir', err)
      return false
    }
  }

  /** The next listed entry, or undefined at the end (a failed read is recorded and ends it). */
  next(dir: Frame): { name: EntryName; type: EntryType } | undefined {
    if (!dir.cursor) return undefined
    try {
      const r = dir.cursor.next()
      return r.done ? undefined : r.value
    } catch (err) {
      dir.blocked = true
      this.fail(dir.path, 'readdir', err)
      const it = dir.cursor
      dir.cursor = undefined
      try {
        it.return?.()
      } catch {
        // the listing already failed and is recorded; this only frees it
      }
      return undefined
    }
  }
}

/**
 * The depth-first walker: empties `top` and everything below it, then removes it.
 * Cancellation is looked at before every step, so it lands between two syscalls.
 */
class DepthFirst {
  readonly #stack: Frame[] = []
  constructor(readonly r: Removal, top: Frame) {
    this.#push(top)
  }

  #push(f: Frame | undefined): void {
    if (f === undefined) return
    this.#stack.push(f)
    this.r.list(f)
  }

  /** Up to `budget` steps; true when the walk is over (done or cancelled). */
  run(budget: number): boolean {
    const { r } = this
    for (let i = 0; i < budget; i++) {
      if (this.#stack.length === 0 || r.cancelled) return true
      const dir = this.#stack[this.#stack.length - 1]!
      const entry = r.next(dir)
      if (entry !== undefined) {
        this.#push(r.step(dir, entry.name, entry.type))
        continue
      }
      this.#stack.pop()
      r.release(dir)
      this.#push(r.finish(dir))
    }
    return this.#stack.length === 0 || r.cancelled
  }

  /** Releases what is still open; reports a cancellation. */
  end(): void {
    while (this.#stack.length > 0) this.r.release(this.#stack.pop()!)
    if (this.r.cancelled && !this.r.rootGone) this.r.cancel()
  }
}

export function emptyDepthFirst(r: Removal, top: Frame): void {
  const walk = new DepthFirst(r, top)
  try {
    walk.run(Infinity)
  } finally {
    walk.end()
  }
}

/** Steps between two returns to the event loop in the async walk: a few ms of work. */
const SLICE_STEPS = 2048

/**
 * The same walk, returning to the event loop every SLICE_STEPS steps so that a SIGTERM handler
 * can abort `options.signal` in the middle of a big tree. After each pause the cwd cache is
 * dropped: the next operation re-enters its directory through /proc/self/fd/N, so nothing that
 * ran meanwhile can leave a relative name resolving elsewhere.
 */
export async function emptyDepthFirstAsync(r: Removal, top: Frame): Promise<void> {
  const walk = new DepthFirst(r, top)
  try {
    while (!walk.run(SLICE_STEPS)) {
      await new Promise<void>((resolve) => setImmediate(resolve))
      forgetCwd()
    }
  } finally {
    walk.end()
  }
}

function refuse(rootPath: string, why: string): never {
  throw new CleanerError('EREFUSED', `refusing to remove '${rootPath}': ${why}`, { path: rootPath })
}

/** Refusals that need no syscall: '/', relative or non-canonical paths, a known mount point. */
function refuseByPath(rootPath: string, mountPoints: ReadonlySet<string>): void {
  if (!rootPath.startsWith('/')) refuse(rootPath, 'it is not an absolute path')
  if (rootPath === '/') refuse(rootPath, 'it is the root directory')
  const parts = rootPath.split('/').slice(1)
  if (parts.some((c) => c === '' || c === '.' || c === '..') || rootPath.includes('\0')) {
    refuse(rootPath, "it is not a canonical path (no '.', '..', '//' or trailing '/')")
  }
  if (mountPoints.has(rootPath)) refuse(rootPath, 'it is a mount point (unmount it first)')
}

/** The root's identity, checked against the plan; only the mount id says "mount point" (btrfs subvolumes have their own st_dev). */
function identify(ops: DirOps, parentFd: number, rootFd: number, rootPath: string, expect: RemoveOptions['expect']) {
  const st = ops.fstat(rootFd)
  if (!st.isDirectory) refuse(rootPath, 'it is not a directory')
  if (expect && (st.dev !== expect.dev || st.ino !== expect.ino)) {
    refuse(rootPath, `it is not the directory that was planned (expected dev ${expect.dev} ino ${expect.ino}, found dev ${st.dev} ino ${st.ino})`)
  }
  const mountId = ops.mountId(rootFd)
  if (mountId !== ops.mountId(parentFd)) refuse(rootPath, "it is a mount point (its mount id differs from its parent's; unmount it first)")
  return { path: rootPath, dev: st.dev, mountId }
}

const gone = (): RemoveResult => ({ ok: true, entries: 0, skipped: [], errors: [] })
const failed = (path: string, syscall: string, err: unknown): RemoveResult => ({ ok: false, entries: 0, skipped: [], errors: [problem(path, syscall, err)] })

/** A removal under way: the verified root's frame (undefined if it could not be entered) and its parent's fd, which the caller closes. */
export interface Opened {
  readonly removal: Removal
  readonly top: Frame | undefined
  readonly parentFd: number
}

/**
 * The start shared by every walker: refusals (CleanerError 'EREFUSED', nothing touched),
 * then the root opened through its parent and checked against the plan. A root that is
 * gone, or cannot be opened, is already a result. Moves the cwd (through `ops`).
 */
export function openRoot(rootPath: string, options: RemoveOptions): Opened | RemoveResult {
  refuseByPath(rootPath, options.mountPoints)
  const ops = options.ops ?? systemDirOps
  const cut = rootPath.lastIndexOf('/')
  const parentPath = cut === 0 ? '/' : rootPath.slice(0, cut)
  const name = rootPath.slice(cut + 1)
  let parentFd: number
  try {
    parentFd = ops.openDir(undefined, parentPath)
  } catch (err) {
    const code = errnoOf(err)
    if (code === 'ENOENT') return gone()
    if (code === 'ENOTDIR' || code === 'ELOOP') refuse(rootPath, `its parent '${parentPath}' is not a directory (a symlink?)`)
    return failed(parentPath, 'open', err)
  }
  let handedOver = false
  try {
    let rootFd: number
    try {
      rootFd = ops.openDir(parentFd, name)
    } catch (err) {
      const code = errnoOf(err)
      if (code === 'ENOENT') return gone()
      if (code === 'ENOTDIR' || code === 'ELOOP') refuse(rootPath, 'it is not a directory (a symlink?)')
      return failed(rootPath, 'open', err)
    }
    let root: ReturnType<typeof identify>
    try {
      root = identify(ops, parentFd, rootFd, rootPath, options.expect)
    } catch (err) {
      ops.close(rootFd)
      if (err instanceof CleanerError) throw err
      return failed(rootPath, 'fstat', err)
    }
    const removal = new Removal(ops, root, options)
    const top = removal.frame(rootFd, parentFd, name, rootPath, undefined, 0)
    handedOver = true
    return { removal, top, parentFd }
  } finally {
    if (!handedOver) ops.close(parentFd)
  }
}

/**
 * Removes the tree at `rootPath` and the root directory itself, without leaving the root's
 * filesystem and mount. Refusals (CleanerError 'EREFUSED') happen before anything is touched;
 * everything else is in the result. A root that is already gone is a success.
 */
export function removeTree(rootPath: string, options: RemoveOptions): RemoveResult {
  refuseByPath(rootPath, options.mountPoints)
  return preservingCwd(() => {
    const opened = openRoot(rootPath, options)
    if (!('removal' in opened)) return opened
    const { removal, top, parentFd } = opened
    try {
      if (top !== undefined) emptyDepthFirst(removal, top)
      return removal.result()
    } finally {
      removal.ops.close(parentFd)
    }
  })
}

/** removeTree for the CLI: the same walk, pausing now and then so that a stop signal is seen. */
export async function removeTreeAsync(rootPath: string, options: RemoveOptions): Promise<RemoveResult> {
  refuseByPath(rootPath, options.mountPoints)
  return preservingCwdAsync(async () => {
    const opened = openRoot(rootPath, options)
    if (!('removal' in opened)) return opened
    const { removal, top, parentFd } = opened
    try {
      if (top !== undefined) await emptyDepthFirstAsync(removal, top)
      return removal.result()
    } finally {
      removal.ops.close(parentFd)
    }
  })
}

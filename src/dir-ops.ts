/**
 * The at-style seam of the remover: every operation is relative to an opened, verified
 * directory fd, never to a path string that a hostile build could re-route through a
 * swapped symlink (seed incident 2 walked into a mounted /run).
 *
 * Node has no openat/unlinkat. `unlinkSync('/proc/self/fd/N/name')` would do, but costs +20%
 * on tmpfs; `chdir('/proc/self/fd/N')` then a bare relative name costs nothing extra, and the
 * /proc magic link lands on exactly the directory object the fd holds (no lookup by name), so
 * it is as race-free as openat. We remember which fd the cwd was last moved to and forget it
 * when that fd is closed (fd numbers are reused) or when `preservingCwd` restores the cwd.
 *
 * Names come from readdir as raw bytes: a hostile build can create names that are not UTF-8,
 * and a decoded string would no longer name the file. Such names stay Buffers (`EntryName`).
 */
import * as fs from 'node:fs'

/** A directory entry name: a string when it is valid UTF-8, otherwise the raw bytes. */
export type EntryName = string | Buffer
export type EntryType = 'dir' | 'file' | 'symlink' | 'other' | 'unknown'

export interface DirOps {
  /** Open the entry `name` of dirFd: O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC (a symlink → ELOOP/ENOTDIR). dirFd === undefined: `name` is an absolute path. */
  openDir(dirFd: number | undefined, name: EntryName): number
  fstat(fd: number): { dev: number; ino: number; isDirectory: boolean }
  /** `mnt_id:` from /proc/self/fdinfo/<fd>: a same-filesystem bind mount has the same st_dev but not the same mount id. */
  mountId(fd: number): number
  /** Streaming (Dir.readSync), d_type only, no stat. Stopping the iteration early closes the listing. */
  list(dirFd: number): Iterable<{ name: EntryName; type: EntryType }>
  /** For an 'unknown' d_type only. */
  lstatType(dirFd: number, name: EntryName): 'dir' | 'file' | 'symlink' | 'other'
  /** Removes a symlink itself, never its target. */
  unlink(dirFd: number, name: EntryName): void
  rmdir(dirFd: number, name: EntryName): void
  close(fd: number): void
}

const O_PATH = 0o10000000 // not in fs.constants; Linux passes it through
const OPEN_DIR = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW // libuv adds O_CLOEXEC
const LIST_BUFFER = 128
const NOT_ASCII = /[^\x00-\x7f]/

/** The directory fd the process cwd was last moved to by us, if still known. */
let cwdFd: number | undefined

function enter(dirFd: number): void {
  if (cwdFd === dirFd) return
  cwdFd = undefined
  process.chdir(`/proc/self/fd/${dirFd}`)
  cwdFd = dirFd
}

/** A name from readdir never holds '/', nor is it '', '.' or '..'; we still refuse to act on one that does. */
export function isPlainName(name: EntryName): boolean {
  if (typeof name === 'string') return name !== '' && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\0')
  if (name.length === 0 || name.includes(0x2f) || name.includes(0)) return false
  return !(name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e)))
}

function plain(name: EntryName): EntryName {
  if (!isPlainName(name)) {
    throw Object.assign(new Error(`refusing a directory entry name that is not a plain name: ${JSON.stringify(String(name))}`), { code: 'EINVAL' })
  }
  return name
}

/** UTF-8 names as strings (cheap, readable), anything else as the exact bytes. */
function nameOf(raw: Buffer): EntryName {
  const text = raw.toString('utf8')
  return !text.includes('\uFFFD') || Buffer.from(text, 'utf8').equals(raw) ? text : raw
}

function typeOf(d: { isDirectory(): boolean; isFile(): boolean; isSymbolicLink(): boolean; isFIFO(): boolean; isSocket(): boolean; isBlockDevice(): boolean; isCharacterDevice(): boolean }): EntryType {
  if (d.isDirectory()) return 'dir'
  if (d.isFile()) return 'file'
  if (d.isSymbolicLink()) return 'symlink'
  if (d.isFIFO() || d.isSocket() || d.isBlockDevice() || d.isCharacterDevice()) return 'other'
  return 'unknown'
}

function* list(dirFd: number): Generator<{ name: EntryName; type: EntryType }> {
  // Through the magic link, not '.': the listing must keep naming this directory after the cwd moves on.
  // latin1 maps each byte to one character, so it loses nothing; an ASCII name (nearly all) is then
  // already its string, and only the others go through the bytes (half the cost of 'buffer' per entry).
  const dir = fs.opendirSync(`/proc/self/fd/${dirFd}`, { encoding: 'latin1', bufferSize: LIST_BUFFER })
  try {
    for (let d = dir.readSync(); d !== null; d = dir.readSync()) {
      const raw = d.name
      yield { name: NOT_ASCII.test(raw) ? nameOf(Buffer.from(raw, 'latin1')) : raw, type: typeOf(d) }
    }
  } finally {
    dir.closeSync()
  }
}

function mountIdOf(text: string, fd: number): number {
  const m = /^mnt_id:\s*(\d+)$/m.exec(text)
  if (!m) throw Object.assign(new Error(`no mnt_id line in /proc/self/fdinfo/${fd}`), { code: 'EPARSE', syscall: 'read' })
  return Number(m[1])
}

export const systemDirOps: DirOps = {
  openDir(dirFd, name) {
    if (dirFd === undefined) {
      if (typeof name !== 'string' || !name.startsWith('/')) throw Object.assign(new Error(`not an absolute path: ${String(name)}`), { code: 'EINVAL' })
      return fs.openSync(name, OPEN_DIR)
    }
    enter(dirFd)
    return fs.openSync(plain(name), OPEN_DIR)
  },
  fstat(fd) {
    const st = fs.fstatSync(fd)
    return { dev: st.dev, ino: st.ino, isDirectory: st.isDirectory() }
  },
  mountId: (fd) => mountIdOf(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'), fd),
  list,
  lstatType(dirFd, name) {
    enter(dirFd)
    const t = typeOf(fs.lstatSync(plain(name)))
    return t === 'unknown' ? 'other' : t
  },
  unlink(dirFd, name) {
    enter(dirFd)
    fs.unlinkSync(plain(name))
  },
  rmdir(dirFd, name) {
    enter(dirFd)
    fs.rmdirSync(plain(name))
  },
  close(fd) {
    if (cwdFd === fd) cwdFd = undefined
    fs.closeSync(fd)
  },
}

/**
 * Runs `fn` (which may move the cwd through `systemDirOps`) and puts the process back in the
 * directory it started in, through an O_PATH fd of it, even when `fn` throws.
 */
export function preservingCwd<T>(fn: () => T): T {
  const saved = fs.openSync('.', O_PATH | fs.constants.O_DIRECTORY)
  cwdFd = undefined
  try {
    return fn()
  } finally {
    restoreCwd(saved)
  }
}

/** preservingCwd for an async `fn`. */
export async function preservingCwdAsync<T>(fn: () => Promise<T>): Promise<T> {
  const saved = fs.openSync('.', O_PATH | fs.constants.O_DIRECTORY)
  cwdFd = undefined
  try {
    return await fn()
  } finally {
    restoreCwd(saved)
  }
}

function restoreCwd(saved: number): void {
  cwdFd = undefined
  try {
    process.chdir(`/proc/self/fd/${saved}`)
  } finally {
    fs.closeSync(saved)
  }
}

/** Forget where the cwd is: the next at-operation moves it again through /proc/self/fd/N. */
export function forgetCwd(): void {
  cwdFd = undefined
}

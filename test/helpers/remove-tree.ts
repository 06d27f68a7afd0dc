/**
 * Helpers for the remover's root tests: a tree to delete next to a canary directory (on the
 * same tmpfs, so a walk that escapes would reach it), fault-injecting DirOps wrappers, and
 * leak checks (cwd, open fds) for "the remover leaves the process as it found it".
 */
import * as fs from 'node:fs'
import { listing, mountPointsBelow, scratchTmpfs, type Scratch } from './sys.js'
import { systemDirOps, type DirOps, type EntryName } from '../../src/dir-ops.js'

export interface World {
  readonly scratch: Scratch
  readonly tree: string
  readonly canary: string
  /** listing(canary) taken when the world was made. */
  readonly canaryBefore: string
  /** Mount points below the scratch dir, freshly read, as removeTree wants them. */
  mounts(): Set<string>
  cleanup(): void
}

/** A scratch tmpfs holding `tree/` (empty) and `canary/` (files, a subdir, a link). */
export function makeWorld(): World {
  const scratch = scratchTmpfs('bc-rmtree-')
  const tree = `${scratch.dir}/tree`
  const canary = `${scratch.dir}/canary`
  fs.mkdirSync(tree)
  fs.mkdirSync(`${canary}/sub`, { recursive: true })
  fs.writeFileSync(`${canary}/precious`, 'precious\n')
  fs.writeFileSync(`${canary}/sub/deep.txt`, 'deep\n')
  fs.symlinkSync('precious', `${canary}/link`)
  return {
    scratch,
    tree,
    canary,
    canaryBefore: listing(canary),
    mounts: () => new Set(mountPointsBelow(scratch.dir)),
    cleanup: () => scratch.cleanup(),
  }
}

/** A Node-style system error. */
export function errno(code: string, syscall: string): Error {
  return Object.assign(new Error(`${code}: injected, ${syscall}`), { code, syscall })
}

/** The path an fd refers to, as the kernel names it. */
export const fdPath = (fd: number): string => fs.readlinkSync(`/proc/self/fd/${fd}`)

export const nameIs = (name: EntryName, want: string): boolean => (typeof name === 'string' ? name : name.toString()) === want

/** systemDirOps with some operations replaced. */
export function wrapOps(overrides: Partial<DirOps>): DirOps {
  return { ...systemDirOps, ...overrides }
}

/** Ops that fail the test if the remover touches anything at all. */
export const tripwireOps: DirOps = {
  openDir: () => { throw new Error('tripwire: openDir called') },
  fstat: () => { throw new Error('tripwire: fstat called') },
  mountId: () => { throw new Error('tripwire: mountId called') },
  list: () => { throw new Error('tripwire: list called') },
  lstatType: () => { throw new Error('tripwire: lstatType called') },
  unlink: () => { throw new Error('tripwire: unlink called') },
  rmdir: () => { throw new Error('tripwire: rmdir called') },
  close: () => { throw new Error('tripwire: close called') },
}

export const openFds = (): number => fs.readdirSync('/proc/self/fd').length

/** Makes a chain `dir/d/d/…/d/bottom` `depth` levels deep, deeper than PATH_MAX allows by path. */
export function makeChain(dir: string, depth: number): void {
  const here = process.cwd()
  try {
    fs.mkdirSync(dir, { recursive: true })
    process.chdir(dir)
    for (let i = 0; i < depth; i++) {
      fs.mkdirSync('d')
      process.chdir('d')
    }
    fs.writeFileSync('bottom', 'bottom\n')
  } finally {
    process.chdir(here)
  }
}

/** How deep the chain made by makeChain is, and whether its bottom file is there. */
export function chainDepth(dir: string): { depth: number; bottom: boolean } {
  const here = process.cwd()
  try {
    process.chdir(dir)
    let depth = 0
    while (fs.existsSync('d')) {
      process.chdir('d')
      depth++
    }
    return { depth, bottom: fs.existsSync('bottom') }
  } finally {
    process.chdir(here)
  }
}

/** Errors and skips reduced to what tests compare. */
export const brief = (ps: readonly { path: string; syscall: string; code: string }[]): string[] =>
  ps.map((p) => `${p.syscall} ${p.code} ${p.path}`).sort()

/**
 * Helpers for root tests: a guard that we run in a private mount namespace, scratch
 * tmpfs directories, shell snippets and tree listings for "nothing changed" assertions.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { execFileSync, spawnSync } from 'node:child_process'

/**
 * Root tests mount and unmount for real. They must run as root, inside a private mount
 * namespace (`npm test` arranges that with `unshare -m --propagation private`), so the
 * host never sees any of it. Anything else is a hard failure, never a silent skip.
 */
export function assertRootSandbox(): void {
  if (process.getuid?.() !== 0) {
    throw new Error('root tests need root (they make real mounts); run `npm test` as root')
  }
  // `npm test` starts the root suite with unshare from a parent in the original namespace;
  // pid 1's namespace is compared too where it can be read.
  const self = fs.readlinkSync('/proc/self/ns/mnt')
  const outer = [process.ppid, 1].flatMap((pid) => {
    try {
      return [fs.readlinkSync(`/proc/${pid}/ns/mnt`)]
    } catch {
      return [] // unreadable (a more privileged pid 1 in a container)
    }
  })
  if (outer.includes(self)) {
    throw new Error('root tests must run in a private mount namespace: use `npm test` (it runs them under `unshare -m --propagation private`)')
  }
}

/** Runs a bash script (`set -euo pipefail`); returns stdout, throws with stderr on failure. */
export function sh(script: string): string {
  const r = spawnSync('bash', ['-euo', 'pipefail', '-c', script], { encoding: 'utf8' })
  if (r.status !== 0) {
    throw new Error(`shell failed (${r.status ?? r.signal}): ${script}\n${r.stderr}`)
  }
  return r.stdout
}

export interface Scratch {
  readonly dir: string
  cleanup(): void
}

/** A fresh directory with its own tmpfs mounted on it; cleanup unmounts everything below. */
export function scratchTmpfs(prefix = 'bc-test-'): Scratch {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256m', 'scratch', dir])
  execFileSync('mount', ['--make-private', dir])
  return {
    dir,
    cleanup() {
      spawnSync('umount', ['-R', '-l', dir])
      fs.rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** Mount points at or below `dir`, in mountinfo order (raw, unescaped text is fine for tests). */
export function mountPointsBelow(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(' ')[4]!.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(dir + '/'))
}

/**
 * A full listing of a tree without following symlinks or crossing into mounts of other
 * devices: one line per entry with type, mode, size, mtime (ns) and link target.
 * Two equal listings mean nothing in the tree changed.
 */
export function listing(root: string): string {
  const lines: string[] = []
  const walk = (p: string): void => {
    const st = fs.lstatSync(p, { bigint: true })
    const kind = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : st.isFile() ? 'f' : 'o'
    const target = st.isSymbolicLink() ? ` -> ${fs.readlinkSync(p)}` : ''
    lines.push(`${kind} ${st.mode.toString(8)} ${st.size} ${st.mtimeNs} ${path.relative(root, p) || '.'}${target}`)
    if (st.isDirectory()) for (const name of fs.readdirSync(p).sort()) walk(path.join(p, name))
  }
  walk(root)
  return lines.join('\n')
}

/** True when something is mounted exactly at `p`. */
export function isMountPoint(p: string): boolean {
  return mountPointsBelow(p).includes(p)
}

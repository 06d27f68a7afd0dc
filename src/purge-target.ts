/**
 * What `build-cleaner purge PATH…` may name: a chroot `<build root>/<group>/<name>` or a
 * whole group `<build root>/<group>`, reached without following any symlink. Everything else
 * — `/`, `//`, `/./`, `/../`, a build root itself, anything outside or deeper, a symlink,
 * a file, a path ending in `.` — is refused before anything changes (exit 2), with a message
 * that says why. Relative paths are resolved from the working directory (`extra-x86_64/copy`
 * from the build root is fine), but like POSIX rm we refuse `.` as the last component: `purge .`
 * typed in the wrong directory would remove that directory.
 */
import * as path from 'node:path'
import type { Io } from './io.js'
import { CleanerError, describeSystemError, isVanished } from './errors.js'
import { isStrictlyBelow } from './paths.js'

export interface PurgeTarget {
  readonly kind: 'chroot' | 'group'
  readonly path: string
  readonly buildRoot: string
  readonly group: string
}

function refuse(input: string, why: string): CleanerError {
  return new CleanerError('EPATH', `refusing to purge ${JSON.stringify(input)}: ${why}`, { path: input })
}

export function resolvePurgeTarget(io: Io, input: string, buildRoots: readonly string[]): PurgeTarget {
  if (input === '') throw refuse(input, 'an empty path')
  if (/[\u0000-\u001f\u007f]/.test(input)) throw refuse(input, 'it contains a control character (newline, tab…); no devtools chroot is named so')
  // `..` is refused outright: resolved by the kernel it follows symlinks, resolved as text it
  // does not, and the two can disagree (`group/link/..`). Name the chroot directly.
  if (input.split('/').includes('..')) throw refuse(input, "it contains '..': name the chroot or group directly")
  if (input.split('/').filter(Boolean).pop() === '.') throw refuse(input, "it ends in '.': name the chroot or group directly (as rm refuses '.')")
  const resolved = path.resolve(input)
  if (resolved === '/') throw refuse(input, 'it is the root directory')
  if (buildRoots.includes(resolved)) throw refuse(input, 'it is a build root; name a group or a chroot inside it')
  const buildRoot = buildRoots.find((root) => isStrictlyBelow(resolved, root))
  if (!buildRoot) {
    const roots = buildRoots.length > 0 ? buildRoots.join(', ') : '(none)'
    throw refuse(input, `it is not inside a build root (build roots: ${roots}; give the path as it is below one of them, or add --build-root)`)
  }
  const parts = resolved.slice(buildRoot.length + 1).split('/')
  // Every component below the build root must be a real directory, not a symlink; checked
  // before the depth, so that `group/link/x` is refused as what it is: a path through a symlink.
  for (let i = 1; i <= Math.min(parts.length, 2); i++) {
    const p = `${buildRoot}/${parts.slice(0, i).join('/')}`
    let st
    try {
      st = io.lstat(p)
    } catch (err) {
      throw refuse(input, isVanished(err) ? `${p} does not exist` : describeSystemError(err))
    }
    if (st.isSymbolicLink()) throw refuse(input, `${p} is a symlink; it is never followed`)
    if (!st.isDirectory()) throw refuse(input, `${p} is not a directory`)
  }
  if (parts.length > 2) throw refuse(input, 'it lies inside a chroot; name the chroot or its group')
  const group = `${buildRoot}/${parts[0]!}`
  return parts.length === 1 ? { kind: 'group', path: resolved, buildRoot, group } : { kind: 'chroot', path: resolved, buildRoot, group }
}

/**
 * --min-free: the seed server's own policy, done safely. When a build root's filesystem has
 * less free space than the target, stale copies are removed oldest first until it holds (the
 * executor asks `beforeRemove` right before each deletion); when it already holds, no copy is
 * removed — leaked mounts are still detached.
 */
import type { Io } from './io.js'
import type { Decision } from './plan.js'
import { formatBytes } from './duration.js'

export interface FreeSpaceReport {
  readonly buildRoot: string
  readonly minFreeBytes: number
  readonly beforeBytes: number
  readonly afterBytes: number
  readonly line: string
}

export interface FreeSpacePlan {
  /** The decisions, with removals that are not needed turned into keep/detach. */
  readonly decisions: Decision[]
  /** The same decisions in execution order: removals oldest first, after everything else. */
  readonly order: Decision[]
  readonly beforeRemove: (d: Decision) => string | undefined
  report(): FreeSpaceReport[]
}

export function freeBytes(io: Io, dir: string): number {
  const s = io.statfs(dir)
  return s.bavail * s.bsize
}

export function planFreeSpace(io: Io, decisions: readonly Decision[], buildRoots: readonly string[], minFreeBytes: number): FreeSpacePlan {
  const before = new Map(buildRoots.map((root) => [root, freeBytes(io, root)]))
  const enough = (free: number) => `enough free space: ${formatBytes(free)} free ≥ min free ${formatBytes(minFreeBytes)}`

  const adjusted = decisions.map((d): Decision => {
    const free = d.chroot ? before.get(d.chroot.buildRoot) : undefined
    if (d.action !== 'remove' || free === undefined) return d
    if (free < minFreeBytes) {
      return { ...d, reasons: [...d.reasons, `${formatBytes(free)} free < min free ${formatBytes(minFreeBytes)}: oldest first until it holds`] }
    }
    const mounts = d.reasons.filter((r) => r.startsWith('leaked mounts'))
    return { ...d, action: mounts.length > 0 ? 'detach' : 'keep', reasons: [enough(free), ...mounts] }
  })
  const removes = adjusted.filter((d) => d.action === 'remove').sort((a, b) => a.chroot!.lastUsed - b.chroot!.lastUsed)
  const order = [...adjusted.filter((d) => d.action !== 'remove'), ...removes]

  return {
    decisions: adjusted,
    order,
    beforeRemove(d) {
      if (!d.chroot) return undefined
      const free = freeBytes(io, d.chroot.buildRoot)
      return free >= minFreeBytes ? `min free reached: ${enough(free)}` : undefined
    },
    report() {
      return buildRoots.map((buildRoot) => {
        const beforeBytes = before.get(buildRoot) ?? 0
        const afterBytes = freeBytes(io, buildRoot)
        const line = `free space on ${buildRoot}: ${formatBytes(beforeBytes)} before, ${formatBytes(afterBytes)} after (min free ${formatBytes(minFreeBytes)})`
        return { buildRoot, minFreeBytes, beforeBytes, afterBytes, line }
      })
    },
  }
}

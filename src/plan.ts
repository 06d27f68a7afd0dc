/**
 * Stage 2, "decide": a pure function of a snapshot, a policy and the time. Every chroot gets
 * exactly one action and the reasons for it, which the dry run prints and the executor
 * carries out (re-checking everything that could have changed).
 *
 * - remove: a copy, not locked (any lock type), used by no process, last used before max age.
 * - detach: an idle chroot (root or copy) that is not due for removal but has mounts below it
 *   (seed incident 1: a leaked /run in root/ made devtools refuse the chroot).
 * - keep: everything else. The master root is never removed by the periodic clean.
 */
import type { ChrootSnapshot, Snapshot } from './snapshot.js'
import type { Refusal } from './discover.js'
import { formatAge } from './duration.js'

export type Action = 'remove' | 'detach' | 'keep'

export interface Decision {
  readonly path: string
  readonly action: Action
  readonly reasons: readonly string[]
  /** The chroot as seen; undefined for an entry refused at discovery (a symlink) or a group. */
  readonly chroot: ChrootSnapshot | undefined
  /** A whole group named to purge (its lock files and the directory, after its chroots). */
  readonly group?: true
}

export interface Policy {
  readonly maxAgeMs: number
  /** The master root is never removed by the periodic clean unless this is false (config keepRoot). */
  readonly keepRoot?: boolean
}

export function plan(snapshot: Snapshot, policy: Policy): Decision[] {
  const decisions = snapshot.chroots.map((chroot) => decide(chroot, snapshot, policy))
  return [...decisions, ...snapshot.refused.map(refusedDecision)].sort((a, b) => a.path.localeCompare(b.path))
}

function decide(chroot: ChrootSnapshot, snapshot: Snapshot, policy: Policy): Decision {
  const busy = busyReasons(chroot)
  if (busy.length > 0) return { path: chroot.path, action: 'keep', reasons: busy, chroot }

  const age = snapshot.takenAt - chroot.lastUsed
  const mounts = chroot.mounts.length > 0 ? [`leaked mounts: ${chroot.mounts.join(', ')}`] : []
  const stale = age > policy.maxAgeMs

  if (stale && (chroot.kind === 'copy' || policy.keepRoot === false)) {
    const why = `stale: last used ${formatAge(age)} ago (max age ${formatAge(policy.maxAgeMs)})`
    return { path: chroot.path, action: 'remove', reasons: [why, ...mounts], chroot }
  }

  const why =
    chroot.kind === 'root'
      ? stale
        ? 'master root: never removed by the periodic clean (config keepRoot)'
        : `master root, fresh: last used ${formatAge(age)} ago`
      : `fresh: last used ${formatAge(age)} ago (max age ${formatAge(policy.maxAgeMs)})`
  if (mounts.length > 0) return { path: chroot.path, action: 'detach', reasons: [...mounts, why], chroot }
  return { path: chroot.path, action: 'keep', reasons: [why], chroot }
}

/** Why the chroot is in use right now, if it is: lock holders first, then processes. */
export function busyReasons(chroot: Pick<ChrootSnapshot, 'lockHolders' | 'users'>): string[] {
  return [
    ...chroot.lockHolders.map((h) =>
      h.pidGone
        ? `locked by pid ${h.pid} (exited; the lock is still held, ${h.kind})`
        : `locked by pid ${h.pid} (${h.command})`,
    ),
    ...chroot.users.map((u) => `used by pid ${u.pid} (${u.command}): ${u.how}`),
  ]
}

function refusedDecision(refusal: Refusal): Decision {
  return { path: refusal.path, action: 'keep', reasons: [refusal.reason], chroot: undefined }
}

/**
 * Stage 3, "act": carry out a plan chroot by chroot. Nothing from stage 1 is trusted: each
 * step re-checks, right before it runs, what could have changed since the snapshot.
 *
 *   1. lock    take <chroot>.lock (flock, held until done); held by anyone → keep
 *   2. users   re-scan /proc under the lock; anyone inside → keep
 *   3. mounts  make every mount below private (recursively), unmount deepest-first, lazily;
 *              re-read mountinfo: anything left → fail, delete nothing (seed incident 1)
 *   4. delete  btrfs subvolumes by `btrfs subvolume delete`, everything else by the
 *              one-filesystem remover, which never leaves the chroot's device or mount
 *              (seed incident 2), walked by `jobs` processes (remove-parallel.ts).
 *              `detach` stops after step 3.
 *
 * A failure in one chroot is reported and the run moves on to the next.
 */
import * as path from 'node:path'
import type { Io } from './io.js'
import type { Logger } from './logger.js'
import type { Decision } from './plan.js'
import type { Outcome, Result } from './report.js'
import type { DirOps } from './dir-ops.js'
import { CleanerError, describeSystemError, isVanished } from './errors.js'
import { lockChroot } from './chroot-lock.js'
import { scanProcesses, usersOfChroots } from './processes.js'
import { detachMountsBelow } from './unmount.js'
import { readMountTable } from './mountinfo.js'
import { removeTreeParallel, type RemoveHelpers } from './remove-parallel.js'
import { deleteSubvolumes, findSubvolumesBelow } from './btrfs.js'
import { busyReasons } from './plan.js'
import { formatAge, formatBytes } from './duration.js'
import { lastUseOf } from './discover.js'
import { freeBytes } from './free-space.js'

export interface ExecuteContext {
  readonly io: Io
  readonly log: Logger
  /** Canonical build roots: nothing outside them, and none of them, is ever removed. */
  readonly buildRoots: readonly string[]
  /** Re-check staleness under the lock (the periodic clean); the purge removes whatever its age. */
  readonly maxAgeMs?: number
  /** Asked right before a deletion: a reason to keep the chroot after all (--min-free reached). */
  readonly beforeRemove?: (decision: Decision) => string | undefined
  readonly signal?: AbortSignal
  /** Walkers for a deletion (1: this process alone); helpers started ahead, if any, are used instead of forking. */
  readonly jobs?: number
  readonly removeHelpers?: RemoveHelpers
  /** The fault-injection seam of the remover (tests): the walk then stays in this process. */
  readonly dirOps?: DirOps
  readonly onProgress?: (p: { path: string; entries: number }) => void
}

export async function execute(decisions: readonly Decision[], ctx: ExecuteContext): Promise<Result[]> {
  const results: Result[] = []
  for (const decision of decisions) {
    if (decision.action === 'keep') {
      results.push({ decision, outcome: 'kept', freedBytes: 0 })
      continue
    }
    if (ctx.signal?.aborted) {
      results.push({ decision, outcome: 'failed', error: 'cancelled before it was started', freedBytes: 0 })
      continue
    }
    const result = await carryOut(decision, ctx)
    logResult(ctx.log, result)
    results.push(result)
  }
  return results
}

function logResult(log: Logger, r: Result): void {
  const where = r.decision.path
  if (r.outcome === 'failed') log.error(`${where}: failed: ${r.error ?? 'unknown error'}`)
  else if (r.outcome === 'removed') log.notice(`${where}: removed (${formatBytes(r.freedBytes)} freed)`)
  else if (r.outcome === 'detached') log.notice(`${where}: leaked mounts detached`)
  else log.info(`${where}: kept: ${[...(r.notes ?? [])].join('; ')}`)
}

/** Refuses anything that is not exactly `<build root>/<group>/<chroot>`. */
export function assertChrootPath(chrootPath: string, buildRoots: readonly string[]): void {
  const ok =
    path.isAbsolute(chrootPath) &&
    path.normalize(chrootPath) === chrootPath &&
    !chrootPath.endsWith('/') &&
    buildRoots.includes(path.dirname(path.dirname(chrootPath))) &&
    !['.', '..', ''].includes(path.basename(chrootPath))
  if (!ok) {
    throw new CleanerError('EREFUSED', `refusing to touch ${chrootPath}: it is not a chroot directly inside a group of a build root`, {
      path: chrootPath,
    })
  }
}

async function carryOut(decision: Decision, ctx: ExecuteContext): Promise<Result> {
  const { io, log } = ctx
  const chroot = decision.chroot!
  const kept = (notes: string[]): Result => ({ decision, outcome: 'kept', notes, freedBytes: 0 })
  try {
    assertChrootPath(chroot.path, ctx.buildRoots)
    const lockPath = chroot.lockFile?.path ?? `${chroot.path}.lock`
    log.debug(`${chroot.path}: taking ${lockPath}`)
    const attempt = await lockChroot(io, lockPath)
    if ('busy' in attempt) return kept([attempt.reason])
    try {
      const identity = recheckIdentity(io, chroot.path, chroot)
      if (identity) return kept([identity])

      const since = decision.action === 'remove' ? usedSincePlanned(io, chroot, ctx.maxAgeMs) : undefined
      if (since) return kept([since])

      const users = usersOfChroots(scanProcesses(io), [chroot]).get(chroot.path) ?? []
      if (users.length > 0) return kept(busyReasons({ lockHolders: [], users }))

      if (chroot.mounts.length > 0 || decision.action === 'detach') log.info(`${chroot.path}: detaching mounts below it`)
      const { detached } = await detachMountsBelow(io, chroot.path, { log, ...(ctx.signal ? { signal: ctx.signal } : {}) })
      const notes = detached.length > 0 ? [`detached ${detached.length} mount(s): ${detached.join(', ')}`] : []
      if (decision.action === 'detach') return { decision, outcome: 'detached', notes, freedBytes: 0 }

      if (ctx.signal?.aborted) return { decision, outcome: 'failed', error: 'cancelled after unmounting, before deleting', notes, freedBytes: 0 }
      const spare = ctx.beforeRemove?.(decision)
      if (spare) return { decision, outcome: detached.length > 0 ? 'detached' : 'kept', notes: [...notes, spare], freedBytes: 0 }
      log.info(`${chroot.path}: removing`)
      const before = freeBytesOr0(io, path.dirname(chroot.path))
      const outcome = await remove(chroot.path, chroot, ctx)
      const freedBytes = Math.max(0, freeBytesOr0(io, path.dirname(chroot.path)) - before)
      return { decision, ...outcome, notes, freedBytes }
    } finally {
      attempt.held.release()
    }
  } catch (err) {
    // The stop signal came while the lock was being taken: the teardown refused to start
    // (throwIfAborted). A cancellation, not a bug: no stack trace.
    if (ctx.signal?.aborted && err === ctx.signal.reason) {
      return { decision, outcome: 'failed', error: 'cancelled before its teardown started: nothing was changed', freedBytes: 0 }
    }
    return { decision, outcome: 'failed', error: messageOf(err), freedBytes: 0 }
  }
}

/** The chroot must still be the very directory we planned on: a rebuilt copy is fresh. */
function recheckIdentity(io: Io, chrootPath: string, planned: { dev: number; ino: number }): string | undefined {
  try {
    const st = io.lstat(chrootPath)
    if (!st.isDirectory()) return `changed since planned: no longer a directory`
    if (st.dev !== planned.dev || st.ino !== planned.ino) return `changed since planned: recreated (a build started meanwhile)`
    return undefined
  } catch (err) {
    if (isVanished(err)) return 'vanished since planned'
    throw err
  }
}

/** A build may have run between the snapshot and our lock: re-read the last use. */
function usedSincePlanned(io: Io, chroot: NonNullable<Decision['chroot']>, maxAgeMs: number | undefined): string | undefined {
  if (maxAgeMs === undefined) return undefined
  // The lock file counts only if it existed when planned: if we just created it, its mtime is ours.
  const lock = chroot.lockFile ? io.lstat(chroot.lockFile.path) : undefined
  const age = Date.now() - lastUseOf(io, chroot.path, io.lstat(chroot.path), lock)
  return age <= maxAgeMs ? `used since planned: last used ${formatAge(age)} ago` : undefined
}

async function remove(
  chrootPath: string,
  chroot: NonNullable<Decision['chroot']>,
  ctx: ExecuteContext,
): Promise<{ outcome: Outcome; error?: string }> {
  const { io, log } = ctx
  if (chroot.fsType === 'btrfs') {
    // Nested subvolumes are their own st_dev (and not mounts): the remover would rightly
    // refuse to enter them, so btrfs deletes them first, deepest-first.
    const nested = await findSubvolumesBelow(io, chrootPath)
    if (chroot.btrfsSubvolume) {
      await deleteSubvolumes(io, chrootPath, { includeSelf: true, log })
      return { outcome: 'removed' }
    }
    if (nested.length > 0) await deleteSubvolumes(io, chrootPath, { includeSelf: false, log })
  }
  const result = await removeTreeParallel(chrootPath, {
    mountPoints: readMountTable(io).mountPoints(),
    expect: { dev: chroot.dev, ino: chroot.ino },
    ...(ctx.removeHelpers ? { helpers: ctx.removeHelpers } : {}),
    ...(ctx.jobs !== undefined ? { workers: ctx.jobs } : {}),
    ...(ctx.dirOps ? { ops: ctx.dirOps } : {}),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    ...(ctx.onProgress ? { onProgress: (p: { entries: number }) => ctx.onProgress!({ path: chrootPath, ...p }) } : {}),
  })
  if (result.ok) return { outcome: 'removed' }
  const problems = [...result.skipped, ...result.errors].map((p) => p.message)
  const shown = problems.slice(0, 5).join('; ') + (problems.length > 5 ? `; and ${problems.length - 5} more` : '')
  return { outcome: 'failed', error: `partially removed (${result.entries} entries): ${shown}` }
}

function freeBytesOr0(io: Io, dir: string): number {
  try {
    return freeBytes(io, dir)
  } catch {
    return 0
  }
}

function messageOf(err: unknown): string {
  if (err instanceof CleanerError) return err.message
  if ((err as { syscall?: unknown })?.syscall) return describeSystemError(err)
  return err instanceof Error ? (err.stack ?? err.message) : String(err)
}

/**
 * `build-cleaner purge [--kill] PATH…`: the emergency purge. The named chroots (or every chroot
 * of a named group) are removed now, whatever their age, with exactly the clean's teardown
 * (lock, users, private + deepest-first lazy unmount, verified, one-filesystem delete/btrfs).
 * A locked or used chroot is refused unless --kill: then its lock holders and users are ended
 * first (SIGTERM, SIGKILL after the grace period, repeated until none is left).
 * A group goes last: its lock files (each taken, then unlinked while held) and the empty dir.
 */
import * as path from 'node:path'
import type { Io } from './io.js'
import type { Logger } from './logger.js'
import type { RunOptions } from './options.js'
import type { Decision } from './plan.js'
import type { Result } from './report.js'
import type { ChrootSnapshot } from './snapshot.js'
import { takeSnapshot } from './snapshot.js'
import { busyReasons } from './plan.js'
import { execute, type ExecuteContext } from './execute.js'
import { killChrootUsers } from './kill-users.js'
import { lockChroot } from './chroot-lock.js'
import { resolvePurgeTarget, type PurgeTarget } from './purge-target.js'
import { CleanerError, describeSystemError, isVanished } from './errors.js'
import { EXIT_FAILED, finishRun, helpersFor, startRun, type RunContext } from './session.js'
import { toJson, toTable } from './report.js'

export async function runPurge(options: RunOptions, paths: readonly string[], ctx: RunContext): Promise<number> {
  let targets: PurgeTarget[] = []
  const started = await startRun(options, ctx, (buildRoots) => {
    if (buildRoots.length === 0) throw new CleanerError('EPATH', 'no build root: the default /var/lib/archbuild does not exist; give --build-root')
    targets = dedupe(paths.map((p) => resolvePurgeTarget(ctx.io, p, buildRoots)))
  })
  if ('exit' in started) return started.exit
  const { buildRoots, release, startedAt } = started
  const { io, log } = ctx
  let removers: ReturnType<typeof helpersFor> | undefined
  try {
    const snapshot = await takeSnapshot(io, buildRoots)
    const plan = planPurge(snapshot.chroots, snapshot.refused, targets, options.kill)
    for (const d of plan) log.info(`${d.path}: ${d.action}: ${d.reasons.join('; ')}`)

    let results: Result[] | undefined
    if (!options.dryRun) {
      results = []
      removers = helpersFor(options, ctx, plan)
      const exec: ExecuteContext = {
        io,
        log,
        buildRoots,
        jobs: options.jobs,
        ...(removers.helpers ? { removeHelpers: removers.helpers } : {}),
        ...(ctx.signal ? { signal: ctx.signal } : {}),
        ...(ctx.dirOps ? { dirOps: ctx.dirOps } : {}),
        ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}),
      }
      for (const decision of plan) results.push(await carryOut(decision, results, options, exec))
    }
    ctx.stdout(options.json ? toJson(plan, results) : toTable(plan, snapshot.takenAt, results))
    return finishRun(options, ctx, plan, results, startedAt)
  } catch (err) {
    log.error(`purge stopped: ${(err as Error).message}`)
    return EXIT_FAILED
  } finally {
    await removers?.close()
    release()
  }
}

function dedupe(targets: PurgeTarget[]): PurgeTarget[] {
  const groups = new Set(targets.filter((t) => t.kind === 'group').map((t) => t.path))
  const seen = new Set<string>()
  return targets.filter((t) => {
    if (seen.has(t.path) || (t.kind === 'chroot' && groups.has(t.group))) return false
    seen.add(t.path)
    return true
  })
}

/** One decision per chroot to purge (groups expanded), then one per group, after its chroots. */
function planPurge(
  chroots: readonly ChrootSnapshot[],
  refused: readonly { path: string; reason: string }[],
  targets: readonly PurgeTarget[],
  kill: boolean,
): Decision[] {
  const out: Decision[] = []
  for (const t of targets) {
    const members = t.kind === 'group' ? chroots.filter((c) => path.dirname(c.path) === t.path) : chroots.filter((c) => c.path === t.path)
    const strays = refused.filter((r) => (t.kind === 'group' ? path.dirname(r.path) === t.path : r.path === t.path))
    for (const chroot of members) {
      const busy = busyReasons(chroot)
      if (busy.length === 0) out.push({ path: chroot.path, action: 'remove', reasons: ['purge requested'], chroot })
      else if (kill) out.push({ path: chroot.path, action: 'remove', reasons: ['purge requested', ...busy.map((b) => `will end: ${b}`)], chroot })
      else out.push({ path: chroot.path, action: 'keep', reasons: [...busy, 'refused: in use (--kill ends these processes first)'], chroot })
    }
    for (const s of strays) out.push({ path: s.path, action: 'keep', reasons: [s.reason, 'refused: remove it by hand'], chroot: undefined })
    if (t.kind === 'chroot' && members.length === 0 && strays.length === 0) {
      out.push({ path: t.path, action: 'keep', reasons: ['refused: not a chroot that discovery accepted'], chroot: undefined })
    }
    if (t.kind === 'group') out.push({ path: t.path, action: 'remove', reasons: ['purge requested: its lock files and the directory, after its chroots'], chroot: undefined, group: true })
  }
  return out
}

async function carryOut(decision: Decision, done: readonly Result[], options: RunOptions, ctx: ExecuteContext): Promise<Result> {
  const failed = (error: string): Result => ({ decision, outcome: 'failed', error, freedBytes: 0 })
  if (decision.action === 'keep') return failed(decision.reasons.find((r) => r.startsWith('refused')) ?? 'refused')
  if (ctx.signal?.aborted) return failed('cancelled before it was started')
  if (decision.group) return removeGroup(decision, done, ctx)

  const chroot = decision.chroot!
  if (options.kill) {
    const report = await killChrootUsers(ctx.io, chroot, { graceMs: options.graceMs, log: ctx.log, ...(ctx.signal ? { signal: ctx.signal } : {}) })
    if (report.survivors.length > 0) {
      return failed(`still in use after --kill: ${report.survivors.map((s) => `pid ${s.pid} (${s.command}): ${s.reason}`).join('; ')}`)
    }
  }
  const [result] = await execute([decision], ctx)
  if (result!.outcome === 'kept') return { ...result!, outcome: 'failed', error: `refused: ${(result!.notes ?? []).join('; ')}` }
  return result!
}

/** After its chroots: each lock file taken and unlinked while held, then the empty directory. */
async function removeGroup(decision: Decision, done: readonly Result[], ctx: ExecuteContext): Promise<Result> {
  const { io, log } = ctx
  const group = decision.path
  const failed = (error: string): Result => ({ decision, outcome: 'failed', error, freedBytes: 0 })
  const left = done.filter((r) => path.dirname(r.decision.path) === group && r.outcome !== 'removed')
  if (left.length > 0) return failed(`not removed: ${left.length} of its entries remain (${left.map((r) => path.basename(r.decision.path)).join(', ')})`)
  if (!ctx.buildRoots.includes(path.dirname(group))) return failed('refused: not a group directly inside a build root')
  try {
    for (const name of io.readdir(group)) {
      const p = `${group}/${name}`
      if (!name.endsWith('.lock') || !io.lstat(p).isFile()) continue
      await unlinkLockFile(io, p, log)
    }
    const rest = io.readdir(group)
    if (rest.length > 0) return failed(`not empty: ${rest.join(', ')}`)
    io.rmdir(group)
    log.notice(`${group}: group removed`)
    return { decision, outcome: 'removed', freedBytes: 0 }
  } catch (err) {
    if (isVanished(err)) return { decision, outcome: 'removed', freedBytes: 0 }
    return failed(err instanceof CleanerError ? err.message : describeSystemError(err))
  }
}

async function unlinkLockFile(io: Io, lockPath: string, log: Logger): Promise<void> {
  const attempt = await lockChroot(io, lockPath)
  if ('busy' in attempt) throw new CleanerError('ELOCKED', `${lockPath}: ${attempt.reason}`, { path: lockPath })
  try {
    io.unlink(lockPath)
    log.debug(`${lockPath}: removed`)
  } finally {
    attempt.held.release()
  }
}

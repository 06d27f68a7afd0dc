/**
 * One run, as a straight line: look → decide → act → report. Returns the exit code; the
 * caller sets process.exitCode (never process.exit() right after logging).
 */
import * as fs from 'node:fs'
import type { Io } from './io.js'
import type { Logger } from './logger.js'
import type { CleanOptions } from './cli.js'
import type { DirOps } from './dir-ops.js'
import { DEFAULT_BUILD_ROOT } from './cli.js'
import { CleanerError, isInputError } from './errors.js'
import { validateBuildRoot } from './discover.js'
import { takeSnapshot } from './snapshot.js'
import { plan } from './plan.js'
import { execute } from './execute.js'
import { lockChroot } from './chroot-lock.js'
import { summarize, summaryLine, toJson, toTable } from './report.js'

export const EXIT_OK = 0
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2
export const EXIT_RUNNING = 75

export interface RunContext {
  readonly io: Io
  readonly log: Logger
  readonly stdout: (text: string) => void
  readonly signal?: AbortSignal
  /** The remover's seam, for fault-injection tests. */
  readonly dirOps?: DirOps
}

export async function runClean(options: CleanOptions, ctx: RunContext): Promise<number> {
  const { io, log } = ctx
  let buildRoots: string[]
  try {
    buildRoots = resolveBuildRoots(io, options.buildRoots)
  } catch (err) {
    if (isInputError(err)) {
      log.error(err.message)
      return EXIT_USAGE
    }
    throw err
  }

  // A real run is single-instance. The dry run takes no lock: it must change nothing at all.
  const runLock = options.dryRun ? undefined : await lockChroot(io, options.runLock)
  if (runLock && 'busy' in runLock) {
    log.error(`another build-cleaner run is active: ${runLock.reason} on ${options.runLock}`)
    return EXIT_RUNNING
  }
  try {
    const snapshot = await takeSnapshot(io, buildRoots)
    // Reported, not fatal: only a process more privileged than we are (we run in a container
    // that does not own it) can hide its root/cwd/exe from root. Locks still protect builds.
    const warnings = snapshot.unreadable.map((p) => `cannot read pid ${p.pid} (${p.what}): ${p.reason}`)
    for (const w of warnings) log.warn(w)
    const decisions = plan(snapshot, { maxAgeMs: options.maxAgeMs })
    for (const d of decisions) log.info(`${d.path}: ${d.action}: ${d.reasons.join('; ')}`)

    const results = options.dryRun
      ? undefined
      : await execute(decisions, { io, log, buildRoots, maxAgeMs: options.maxAgeMs, ...(ctx.signal ? { signal: ctx.signal } : {}), ...(ctx.dirOps ? { dirOps: ctx.dirOps } : {}) })

    ctx.stdout(options.json ? toJson(decisions, results, warnings) : toTable(decisions, snapshot.takenAt, results))
    const summary = summarize(decisions, results)
    log.notice(summaryLine(summary, options.dryRun))
    if (ctx.signal?.aborted) {
      log.error('stopped by a signal before finishing: run again to complete the work')
      return EXIT_FAILED
    }
    return (summary.failed ?? 0) > 0 ? EXIT_FAILED : EXIT_OK
  } finally {
    if (runLock && 'held' in runLock) runLock.held.release()
  }
}

/** Validated, canonical, de-duplicated build roots. The default may be absent: nothing to do. */
function resolveBuildRoots(io: Io, given: readonly string[]): string[] {
  if (given.length === 0) {
    if (!fs.existsSync(DEFAULT_BUILD_ROOT)) return []
    return [validateBuildRoot(io, DEFAULT_BUILD_ROOT)]
  }
  const roots = [...new Set(given.map((g) => validateBuildRoot(io, g)))]
  for (const a of roots) {
    for (const b of roots) {
      if (a !== b && (b.startsWith(a + '/') || a === '/')) {
        throw new CleanerError('EPATH', `build roots must not nest: ${b} is inside ${a}`)
      }
    }
  }
  return roots
}

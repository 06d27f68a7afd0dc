/**
 * What every run shares, clean or purge: resolving the build roots (bad input → exit 2 before
 * anything is touched), the single-instance run lock (exit 75), and the end of a run: the
 * summary line, the metrics file and the exit code.
 */
import * as fs from 'node:fs'
import type { Io } from './io.js'
import type { Logger } from './logger.js'
import type { DirOps } from './dir-ops.js'
import type { RunOptions } from './options.js'
import type { Decision } from './plan.js'
import type { Result } from './report.js'
import { DEFAULT_BUILD_ROOT } from './cli.js'
import { CleanerError, isInputError } from './errors.js'
import { validateBuildRoot } from './discover.js'
import { lockChroot } from './chroot-lock.js'
import { summarize, summaryLine } from './report.js'
import { startRemoveHelpers, type RemoveHelpers } from './remove-parallel.js'
import { readLastSuccess, renderMetrics, writeMetricsAtomically } from './metrics.js'
import { EXIT_FAILED, EXIT_OK, EXIT_RUNNING, EXIT_USAGE } from './exit-codes.js'

export { EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RUNNING }

export interface RunContext {
  readonly io: Io
  readonly log: Logger
  readonly stdout: (text: string) => void
  readonly signal?: AbortSignal
  /** The remover's seam, for fault-injection tests. */
  readonly dirOps?: DirOps
  /** Remove helpers the caller started ahead (the CLI, for a purge) and closes itself. */
  readonly removeHelpers?: RemoveHelpers
  /** Live progress of a big deletion (the CLI shows it on a TTY only). */
  readonly onProgress?: (p: { path: string; entries: number }) => void
}

export type Started = { readonly exit: number } | { readonly buildRoots: string[]; readonly startedAt: number; release(): void }

/**
 * Resolves the build roots, lets `validate` check the rest of the input against them (both may
 * throw input errors → exit 2, nothing touched), then takes the run lock (busy → exit 75).
 */
export async function startRun(options: RunOptions, ctx: RunContext, validate?: (buildRoots: string[]) => void): Promise<Started> {
  const startedAt = Date.now()
  let buildRoots: string[]
  try {
    buildRoots = resolveBuildRoots(ctx.io, options.buildRoots)
    validate?.(buildRoots)
  } catch (err) {
    if (isInputError(err)) {
      ctx.log.error(err.message)
      return { exit: EXIT_USAGE }
    }
    throw err
  }
  if (options.dryRun) return { buildRoots, startedAt, release() {} } // a dry run takes no lock: it changes nothing
  const lock = await lockChroot(ctx.io, options.runLock)
  if ('busy' in lock) {
    ctx.log.error(`another build-cleaner run is active: ${lock.reason} on ${options.runLock}`)
    return { exit: EXIT_RUNNING }
  }
  return { buildRoots, startedAt, release: () => lock.held.release() }
}

/** Summary line, metrics file, exit code. */
export function finishRun(options: RunOptions, ctx: RunContext, decisions: readonly Decision[], results: readonly Result[] | undefined, startedAt: number): number {
  const summary = summarize(decisions, results)
  ctx.log.notice(summaryLine(summary, options.dryRun))
  let exit = (summary.failed ?? 0) > 0 ? EXIT_FAILED : EXIT_OK
  if (ctx.signal?.aborted) {
    ctx.log.error('stopped by a signal before finishing: run again to complete the work')
    exit = EXIT_FAILED
  }
  if (options.metricsFile && results) {
    try {
      let previous: number | undefined
      try {
        previous = readLastSuccess(options.metricsFile)
      } catch (err) {
        ctx.log.warn(`ignoring the previous metrics file: ${(err as Error).message}`)
      }
      const text = renderMetrics(
        {
          startedAt,
          finishedAt: Date.now(),
          success: exit === EXIT_OK,
          outcomes: { removed: summary.removed ?? 0, detached: summary.detached ?? 0, kept: summary.kept ?? 0, failed: summary.failed ?? 0 },
          freedBytes: summary.freedBytes ?? 0,
        },
        previous,
      )
      writeMetricsAtomically(options.metricsFile, text)
    } catch (err) {
      ctx.log.error(`cannot write the metrics file ${options.metricsFile}: ${(err as Error).message}`)
      exit = EXIT_FAILED
    }
  }
  return exit
}

/** Validated, canonical, de-duplicated build roots. The default may be absent: nothing to do. */
export function resolveBuildRoots(io: Io, given: readonly string[]): string[] {
  if (given.length === 0) {
    if (!fs.existsSync(DEFAULT_BUILD_ROOT)) return []
    return [validateBuildRoot(io, DEFAULT_BUILD_ROOT)]
  }
  const roots = [...new Set(given.map((g) => validateBuildRoot(io, g)))]
  for (const a of roots) {
    for (const b of roots) {
      if (a !== b && b.startsWith(a + '/')) throw new CleanerError('EPATH', `build roots must not nest: ${b} is inside ${a}`)
    }
  }
  return roots
}

/**
 * Helper processes for the deletions ahead, started now so that their start (0.1–0.3 s) overlaps
 * the lock, user re-scan and unmount steps; none when nothing will be walked (a dry run, no
 * removal of a plain-directory chroot, --jobs 1) or the walk must stay in this process (dirOps).
 * Helpers the caller started (ctx.removeHelpers) are used as they are, and left to it to close.
 */
export function helpersFor(options: RunOptions, ctx: RunContext, decisions: readonly Decision[]): { helpers?: RemoveHelpers; close(): Promise<void> } {
  const none = { close: async () => {} }
  if (ctx.removeHelpers !== undefined) return { helpers: ctx.removeHelpers, close: none.close } // the caller's to close
  const walks = decisions.some((d) => d.action === 'remove' && d.chroot !== undefined && !d.chroot.btrfsSubvolume)
  if (options.dryRun || options.jobs <= 1 || ctx.dirOps !== undefined || !walks) return none
  const helpers = startRemoveHelpers(options.jobs - 1)
  return { helpers, close: () => helpers.close() }
}

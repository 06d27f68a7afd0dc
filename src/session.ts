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
import { readLastSuccess, renderMetrics, writeMetricsAtomically } from './metrics.js'

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

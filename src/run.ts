/**
 * One periodic clean, as a straight line: look → decide → act → report. Returns the exit code;
 * the caller sets process.exitCode (never process.exit() right after logging).
 */
import type { RunOptions } from './options.js'
import type { Decision } from './plan.js'
import type { Result } from './report.js'
import { takeSnapshot } from './snapshot.js'
import { plan } from './plan.js'
import { execute } from './execute.js'
import { planFreeSpace } from './free-space.js'
import { EXIT_FAILED, EXIT_OK, finishRun, helpersFor, startRun, type RunContext } from './session.js'
import { toJson, toTable } from './report.js'

export async function runClean(options: RunOptions, ctx: RunContext): Promise<number> {
  const started = await startRun(options, ctx)
  if ('exit' in started) return started.exit
  const { buildRoots, release, startedAt } = started
  const { io, log } = ctx
  let removers: ReturnType<typeof helpersFor> | undefined
  try {
    const snapshot = await takeSnapshot(io, buildRoots)
    // Reported, not fatal: only a process more privileged than we are (we run in a container
    // that does not own it) can hide its root/cwd/exe from root. Locks still protect builds.
    const warnings = snapshot.unreadable.map((p) => `cannot read pid ${p.pid} (${p.what}): ${p.reason}`)
    for (const w of warnings) log.warn(w)

    let decisions: Decision[] = plan(snapshot, { maxAgeMs: options.maxAgeMs, keepRoot: options.keepRoot })
    const space = options.minFreeBytes === undefined ? undefined : planFreeSpace(io, decisions, buildRoots, options.minFreeBytes)
    if (space) decisions = space.decisions
    for (const d of decisions) log.info(`${d.path}: ${d.action}: ${d.reasons.join('; ')}`)

    let results: Result[] | undefined
    if (!options.dryRun) {
      removers = helpersFor(options, ctx, decisions)
      results = await execute(space?.order ?? decisions, {
        io,
        log,
        buildRoots,
        maxAgeMs: options.maxAgeMs,
        jobs: options.jobs,
        ...(removers.helpers ? { removeHelpers: removers.helpers } : {}),
        ...(space ? { beforeRemove: space.beforeRemove } : {}),
        ...(ctx.signal ? { signal: ctx.signal } : {}),
        ...(ctx.dirOps ? { dirOps: ctx.dirOps } : {}),
      })
    }
    const freeSpace = space?.report() ?? []
    for (const f of freeSpace) log.notice(f.line)
    ctx.stdout(
      options.json
        ? toJson(decisions, results, warnings, freeSpace.map(({ line: _line, ...rest }) => rest))
        : toTable(decisions, snapshot.takenAt, results),
    )
    return finishRun(options, ctx, decisions, results, startedAt)
  } catch (err) {
    ctx.log.error(`run stopped: ${(err as Error).message}`)
    return EXIT_FAILED
  } finally {
    await removers?.close()
    release()
  }
}

export { EXIT_OK }

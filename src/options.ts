/**
 * Flags over the config file over the defaults: one validated set of options for a run.
 * Values from the file were validated when it was loaded (config.ts), flags when parsed.
 */
import type { Flags } from './cli.js'
import type { FileConfig } from './config.js'
import { DEFAULT_GRACE, DEFAULT_MAX_AGE, DEFAULT_RUN_LOCK } from './cli.js'
import { parseDuration } from './duration.js'
import { parseSize } from './size.js'
import { defaultJobs } from './jobs.js'

export interface RunOptions {
  readonly dryRun: boolean
  readonly json: boolean
  /** As given (not yet validated against the filesystem); empty means the default build root. */
  readonly buildRoots: readonly string[]
  readonly verbosity: 'quiet' | 'normal' | 'verbose'
  readonly runLock: string
  readonly metricsFile: string | undefined
  /** Walkers for a deletion: 1 = this process alone. */
  readonly jobs: number
  // clean
  readonly maxAgeMs: number
  readonly minFreeBytes: number | undefined
  /** The master root is never removed by the periodic clean unless this is false. */
  readonly keepRoot: boolean
  // purge
  readonly kill: boolean
  readonly graceMs: number
}

export function resolveOptions(flags: Flags, config: FileConfig): RunOptions {
  const fromConfig = <T>(value: string | undefined, field: string, parse: (f: string, v: string) => T): T | undefined =>
    value === undefined ? undefined : parse(`config.${field}`, value)
  return {
    dryRun: flags.dryRun,
    json: flags.json,
    buildRoots: flags.buildRoots.length > 0 ? flags.buildRoots : (config.buildRoots ?? []),
    verbosity: flags.verbosity,
    runLock: flags.runLock ?? config.runLock ?? DEFAULT_RUN_LOCK,
    metricsFile: flags.metricsFile ?? config.metricsFile,
    jobs: flags.jobs ?? config.jobs ?? defaultJobs(),
    maxAgeMs: flags.maxAgeMs ?? fromConfig(config.maxAge, 'maxAge', parseDuration) ?? parseDuration('default', DEFAULT_MAX_AGE),
    minFreeBytes: flags.minFreeBytes ?? fromConfig(config.minFree, 'minFree', parseSize),
    keepRoot: config.keepRoot ?? true,
    kill: flags.kill,
    graceMs: flags.graceMs ?? fromConfig(config.grace, 'grace', parseDuration) ?? parseDuration('default', DEFAULT_GRACE),
  }
}

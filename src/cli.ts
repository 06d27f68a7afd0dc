/**
 * Command line → a request. Only parsing lives here: a bad flag or value is a
 * CleanerError('EUSAGE') naming the flag, what was expected and what came, raised before
 * anything is touched (exit 2). Merging with the config file is options.ts's job.
 */
import { parseArgs } from 'node:util'
import { CleanerError } from './errors.js'
import { parseDuration } from './duration.js'
import { parseSize } from './size.js'
import { parseJobs } from './jobs.js'

export const DEFAULT_BUILD_ROOT = '/var/lib/archbuild'
export const DEFAULT_MAX_AGE = '7d'
export const DEFAULT_GRACE = '10s'
export const DEFAULT_RUN_LOCK = '/run/build-cleaner.lock'

/** What the command line said; undefined = not given (the config file or the default decides). */
export interface Flags {
  readonly dryRun: boolean
  readonly json: boolean
  readonly buildRoots: readonly string[]
  readonly config: string | undefined
  readonly runLock: string | undefined
  readonly metricsFile: string | undefined
  readonly verbosity: 'quiet' | 'normal' | 'verbose'
  /** Walkers for a deletion (this process and jobs − 1 helpers). */
  readonly jobs: number | undefined
  // clean
  readonly maxAgeMs: number | undefined
  readonly minFreeBytes: number | undefined
  // purge
  readonly kill: boolean
  readonly graceMs: number | undefined
}

export type CliRequest =
  | { readonly kind: 'help'; readonly command: 'clean' | 'purge' }
  | { readonly kind: 'version' }
  | { readonly kind: 'clean'; readonly flags: Flags }
  | { readonly kind: 'purge'; readonly flags: Flags; readonly paths: readonly string[] }

export const HELP = `Usage: build-cleaner [--dry-run] [--build-root DIR]... [--max-age DURATION] [--min-free SIZE] [--json]
       build-cleaner purge [--dry-run] [--kill [--grace DURATION]] [--build-root DIR]... PATH...

Cleans Arch Linux devtools build chroots (<build root>/<group>/{root,<copy>}): removes
stale copies, detaches mounts leaked into idle chroots, and leaves alone any chroot whose
lock is held or that a live process uses. \`purge\` removes the named chroots or groups now.

Options:
  -n, --dry-run           show the plan, change nothing
      --build-root DIR    a build root (repeatable; default ${DEFAULT_BUILD_ROOT})
      --max-age DURATION  remove copies unused for longer than this (default ${DEFAULT_MAX_AGE};
                          e.g. 36h, 7d, 90m)
      --min-free SIZE     only remove stale copies (oldest first) while a build root's
                          filesystem has less free space than this (e.g. 60G)
      --config FILE       settings file (default /etc/build-cleaner.json if it exists)
      --json              print one JSON object on stdout (logs stay on stderr)
      --metrics-file PATH write node_exporter textfile metrics after a real run
      --run-lock FILE     single-instance lock (default ${DEFAULT_RUN_LOCK})
  -j, --jobs N            delete with N walkers: this process and N-1 helper processes
                          (default: one per core, at most 4; 1 = no helpers)
  -v, --verbose           more detail on stderr
  -q, --quiet             only warnings and errors on stderr
  -h, --help              this help
  -V, --version           the version

purge options:
      --kill              end lock holders and processes inside first: SIGTERM, then
                          SIGKILL after the grace period
      --grace DURATION    time between SIGTERM and SIGKILL (default ${DEFAULT_GRACE})
  PATH                    a chroot (<build root>/<group>/<name>) or a whole group
                          (<build root>/<group>); never followed through a symlink

Exit status: 0 all planned work done (chroots kept because in use are not failures),
1 at least one chroot failed or was refused, 2 bad input (nothing touched),
75 another run is active.`

const OPTIONS = {
  'dry-run': { type: 'boolean', short: 'n' },
  'build-root': { type: 'string', multiple: true },
  'max-age': { type: 'string' },
  'min-free': { type: 'string' },
  config: { type: 'string' },
  json: { type: 'boolean' },
  'metrics-file': { type: 'string' },
  'run-lock': { type: 'string' },
  jobs: { type: 'string', short: 'j' },
  kill: { type: 'boolean' },
  grace: { type: 'string' },
  verbose: { type: 'boolean', short: 'v' },
  quiet: { type: 'boolean', short: 'q' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const

export function parseCli(argv: readonly string[]): CliRequest {
  const purge = argv[0] === 'purge'
  let parsed
  try {
    parsed = parseArgs({ args: purge ? argv.slice(1) : [...argv], options: OPTIONS, strict: true, allowPositionals: purge })
  } catch (err) {
    throw usageErrorFrom(err, purge)
  }
  const { values, positionals } = parsed
  if (values.help) return { kind: 'help', command: purge ? 'purge' : 'clean' }
  if (values.version) return { kind: 'version' }
  if (values.verbose && values.quiet) throw usage('--verbose and --quiet exclude each other: give one of them')
  if (!purge) {
    for (const flag of ['kill', 'grace'] as const) {
      if (values[flag] !== undefined) throw usage(`--${flag} belongs to \`build-cleaner purge\` (see --help)`)
    }
  } else {
    for (const flag of ['max-age', 'min-free'] as const) {
      if (values[flag] !== undefined) throw usage(`--${flag} does not apply to purge: it removes the named chroots whatever their age`)
    }
    if (values.grace !== undefined && !values.kill) throw usage('--grace only makes sense with --kill')
    if (positionals.length === 0) throw usage('purge needs at least one PATH: a chroot or a group inside a build root')
  }
  for (const [flag, value] of [['--build-root', values['build-root']], ['--config', values.config], ['--run-lock', values['run-lock']], ['--metrics-file', values['metrics-file']]] as const) {
    for (const v of Array.isArray(value) ? value : value === undefined ? [] : [value]) {
      if (v === '') throw usage(`${flag} expects a path, got an empty string`)
    }
  }
  const flags: Flags = {
    dryRun: values['dry-run'] ?? false,
    json: values.json ?? false,
    buildRoots: values['build-root'] ?? [],
    config: values.config,
    runLock: values['run-lock'],
    metricsFile: values['metrics-file'],
    verbosity: values.verbose ? 'verbose' : values.quiet ? 'quiet' : 'normal',
    jobs: values.jobs === undefined ? undefined : parseJobs('--jobs', values.jobs),
    maxAgeMs: values['max-age'] === undefined ? undefined : parseDuration('--max-age', values['max-age']),
    minFreeBytes: values['min-free'] === undefined ? undefined : parseSize('--min-free', values['min-free']),
    kill: values.kill ?? false,
    graceMs: values.grace === undefined ? undefined : parseDuration('--grace', values.grace),
  }
  return purge ? { kind: 'purge', flags, paths: positionals } : { kind: 'clean', flags }
}

function usage(message: string): CleanerError {
  return new CleanerError('EUSAGE', message)
}

/** Turns node:util parseArgs errors into messages that name the flag and what was expected. */
function usageErrorFrom(err: unknown, purge: boolean): CleanerError {
  const e = err as { code?: string; message?: string }
  const message = e.message ?? String(err)
  const flag = /'(-[^' ]*)/.exec(message)?.[1] ?? /(--?[\w-]+)/.exec(message)?.[1]
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return usage(`unknown option ${flag ?? message} (see --help)`)
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return usage(`${flag ?? 'option'}: ${message.replace(/^Option '[^']*' /, '')} (see --help)`)
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL': {
      const arg = message.replace(/^Unexpected argument '([^']*)'.*$/s, '$1')
      return usage(`unexpected argument: ${arg} (${purge ? 'see --help' : 'the clean takes only options; to remove chroots by name use `build-cleaner purge PATH`'})`)
    }
    default:
      return usage(message)
  }
}

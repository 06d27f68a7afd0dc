/**
 * Command line → a validated request. Only parsing and validation live here: a bad flag or
 * value is a CleanerError('EUSAGE') naming the flag, what was expected and what came, raised
 * before anything is touched (exit 2).
 */
import { parseArgs } from 'node:util'
import { CleanerError } from './errors.js'
import { parseDuration } from './duration.js'

export const DEFAULT_BUILD_ROOT = '/var/lib/archbuild'
export const DEFAULT_MAX_AGE = '7d'
export const DEFAULT_RUN_LOCK = '/run/build-cleaner.lock'

export interface CleanOptions {
  readonly dryRun: boolean
  readonly json: boolean
  /** As given; empty means the default build root. */
  readonly buildRoots: readonly string[]
  readonly maxAgeMs: number
  readonly verbosity: 'quiet' | 'normal' | 'verbose'
  readonly runLock: string
}

export type CliRequest =
  | { readonly kind: 'help' }
  | { readonly kind: 'version' }
  | { readonly kind: 'clean'; readonly options: CleanOptions }

export const HELP = `Usage: build-cleaner [--dry-run] [--build-root DIR]... [--max-age DURATION] [--json] [-v|-q]

Cleans Arch Linux devtools build chroots (<build root>/<group>/{root,<copy>}):
removes stale copies, detaches mounts leaked into idle chroots, and leaves alone any
chroot whose lock is held or that a live process uses.

Options:
  -n, --dry-run          show the plan, change nothing
      --build-root DIR   a build root to clean (repeatable; default ${DEFAULT_BUILD_ROOT})
      --max-age DURATION remove copies unused for longer than this (default ${DEFAULT_MAX_AGE};
                         e.g. 36h, 7d, 90m)
      --json             print one JSON object on stdout (logs stay on stderr)
      --run-lock FILE    single-instance lock (default ${DEFAULT_RUN_LOCK})
  -v, --verbose          more detail on stderr
  -q, --quiet            only warnings and errors on stderr
  -h, --help             this help
  -V, --version          the version

Exit status: 0 all planned work done (chroots kept because in use are not failures),
1 at least one chroot failed, 2 bad input (nothing touched), 75 another run is active.`

const OPTIONS = {
  'dry-run': { type: 'boolean', short: 'n' },
  'build-root': { type: 'string', multiple: true },
  'max-age': { type: 'string' },
  json: { type: 'boolean' },
  'run-lock': { type: 'string' },
  verbose: { type: 'boolean', short: 'v' },
  quiet: { type: 'boolean', short: 'q' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const

export function parseCli(argv: readonly string[]): CliRequest {
  let values
  try {
    ;({ values } = parseArgs({ args: [...argv], options: OPTIONS, strict: true, allowPositionals: false }))
  } catch (err) {
    throw usageErrorFrom(err)
  }
  if (values.help) return { kind: 'help' }
  if (values.version) return { kind: 'version' }
  if (values.verbose && values.quiet) {
    throw new CleanerError('EUSAGE', '--verbose and --quiet exclude each other: give one of them')
  }
  const buildRoots = values['build-root'] ?? []
  for (const root of buildRoots) {
    if (root === '') throw new CleanerError('EUSAGE', '--build-root expects a directory, got an empty string')
  }
  if (values['run-lock'] === '') throw new CleanerError('EUSAGE', '--run-lock expects a file path, got an empty string')
  return {
    kind: 'clean',
    options: {
      dryRun: values['dry-run'] ?? false,
      json: values.json ?? false,
      buildRoots,
      maxAgeMs: parseDuration('--max-age', values['max-age'] ?? DEFAULT_MAX_AGE),
      verbosity: values.verbose ? 'verbose' : values.quiet ? 'quiet' : 'normal',
      runLock: values['run-lock'] ?? DEFAULT_RUN_LOCK,
    },
  }
}

/** Turns node:util parseArgs errors into messages that name the flag and what was expected. */
function usageErrorFrom(err: unknown): CleanerError {
  const e = err as { code?: string; message?: string }
  const message = e.message ?? String(err)
  const flag = /'(-[^' ]*)/.exec(message)?.[1] ?? /(--?[\w-]+)/.exec(message)?.[1]
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return new CleanerError('EUSAGE', `unknown option ${flag ?? message} (see --help)`)
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return new CleanerError('EUSAGE', `${flag ?? 'option'}: ${message.replace(/^Option '[^']*' /, '')} (see --help)`)
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return new CleanerError('EUSAGE', `unexpected argument: ${message.replace(/^Unexpected argument '([^']*)'.*$/s, '$1')} (build-cleaner takes only options; see --help)`)
    default:
      return new CleanerError('EUSAGE', message)
  }
}

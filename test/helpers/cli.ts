/**
 * Running the real CLI as a separate process, the way systemd or an admin does: from any
 * working directory (relative PATH arguments), with stderr on a file (journald's stream), under
 * a pty (progress), or in the background to be signalled mid-run (SIGTERM, SIGKILL).
 * The compiled build/src/bin.js under `npm test`; src/bin.ts through tsx when a test file is
 * run with tsx. Paths are absolute, so the CLI can start in any cwd.
 */
import * as path from 'node:path'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'

export interface CliResult {
  readonly status: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

export interface CliOptions {
  readonly cwd?: string
  /** Added to (or, when undefined, removed from) the test's environment. */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** A file descriptor to use as the CLI's stderr (then `stderr` in the result is empty). */
  readonly stderrFd?: number
}

/** argv after `node`: absolute, so the CLI can run from any cwd. */
export function cliArgv(): string[] {
  const root = process.cwd()
  if (import.meta.url.endsWith('.ts')) return ['--import', import.meta.resolve('tsx'), path.join(root, 'src/bin.ts')]
  return [path.join(root, 'build/src/bin.js')]
}

/** The command line as one shell string (for `script -c`). */
export function cliShellCommand(args: readonly string[]): string {
  return [process.execPath, ...cliArgv(), ...args].map(shellQuote).join(' ')
}

export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`
}

function envOf(extra: CliOptions['env']): NodeJS.ProcessEnv {
  // A JOURNAL_STREAM inherited from the test's own service manager must not leak in.
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' }
  delete env['JOURNAL_STREAM']
  delete env['FORCE_COLOR'] // node warns on stderr when both are set
  for (const [k, v] of Object.entries(extra ?? {})) {
    if (v === undefined) delete env[k]
    else env[k] = v
  }
  return env
}

export function runCliSync(args: readonly string[], opts: CliOptions = {}): CliResult {
  const r = spawnSync(process.execPath, [...cliArgv(), ...args], {
    encoding: 'utf8',
    cwd: opts.cwd ?? process.cwd(),
    env: envOf(opts.env),
    stdio: ['ignore', 'pipe', opts.stderrFd ?? 'pipe'],
    maxBuffer: 64 << 20,
  })
  if (r.error) throw r.error
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

export interface Running {
  readonly child: ChildProcess
  readonly pid: number
  readonly done: Promise<CliResult>
}

/** Starts the CLI in the background; `done` settles when it has exited and its pipes are drained. */
export function startCli(args: readonly string[], opts: CliOptions = {}): Running {
  const child = spawn(process.execPath, [...cliArgv(), ...args], {
    cwd: opts.cwd ?? process.cwd(),
    env: envOf(opts.env),
    stdio: ['ignore', 'pipe', opts.stderrFd ?? 'pipe'],
  })
  if (child.pid === undefined) throw new Error('could not start the CLI')
  let stdout = ''
  let stderr = ''
  child.stdout?.setEncoding('utf8').on('data', (d: string) => void (stdout += d))
  child.stderr?.setEncoding('utf8').on('data', (d: string) => void (stderr += d))
  const done = new Promise<CliResult>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (status, signal) => resolve({ status, signal, stdout, stderr }))
  })
  return { child, pid: child.pid, done }
}

/** Runs the CLI once per argument list, `concurrency` at a time; results in the same order. */
export async function runCliMany(runs: readonly { args: readonly string[]; opts?: CliOptions }[], concurrency = 4): Promise<CliResult[]> {
  const results: CliResult[] = new Array(runs.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < runs.length) {
      const i = next++
      results[i] = await startCli(runs[i]!.args, runs[i]!.opts).done
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, runs.length) }, worker))
  return results
}

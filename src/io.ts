/**
 * The one I/O seam for everything outside the remover's hot loop (which has its own
 * at-style seam in dir-ops.ts). Modules that touch the system take an `Io`; tests wrap
 * `systemIo` to inject a fault (EBUSY, EACCES, a vanished pid, a failing `umount`)
 * at exactly one place.
 */
import * as fs from 'node:fs'

export interface RunOptions {
  /** Extra file descriptors to hand to the child as fd 3, 4, …, in this order. */
  readonly passFds?: readonly number[]
  /** Abort the child (SIGTERM) when this signal fires. */
  readonly signal?: AbortSignal
}

export interface RunResult {
  /** The exit code; -1 when the program could not be started or was killed. */
  readonly exitCode: number
  readonly stdout: string
  readonly stderr: string
  /** Why the program did not run to completion (not found, killed by a signal), if so. */
  readonly failure?: string
}

export interface Io {
  readFile(path: string): string
  readdir(path: string): string[]
  lstat(path: string): fs.Stats
  stat(path: string): fs.Stats
  statfs(path: string): fs.StatsFs
  readlink(path: string): string
  open(path: string, flags: number): number
  fstat(fd: number): fs.Stats
  close(fd: number): void
  unlink(path: string): void
  rmdir(path: string): void
  /** Runs a program without a shell. Never throws for a non-zero exit: look at `exitCode`. */
  run(file: string, args: readonly string[], options?: RunOptions): Promise<RunResult>
  kill(pid: number, signal: NodeJS.Signals): void
}

async function run(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const passFds = options.passFds ?? []
  // Loaded on first use: execa costs ~100 ms to import, and the dry run never runs a program.
  const { execa } = await import('execa')
  const result = await execa(file, args, {
    reject: false,
    stdio: ['ignore', 'pipe', 'pipe', ...(passFds as never[])],
    env: { LC_ALL: 'C' },
    ...(options.signal ? { cancelSignal: options.signal } : {}),
  })
  const failure = result.failed && result.exitCode === undefined ? result.shortMessage : undefined
  return {
    exitCode: result.exitCode ?? -1,
    stdout: String(result.stdout ?? ''),
    stderr: String(result.stderr ?? ''),
    ...(failure === undefined ? {} : { failure }),
  }
}

export const systemIo: Io = {
  readFile: (path) => fs.readFileSync(path, 'utf8'),
  readdir: (path) => fs.readdirSync(path),
  lstat: (path) => fs.lstatSync(path),
  stat: (path) => fs.statSync(path),
  statfs: (path) => fs.statfsSync(path),
  readlink: (path) => fs.readlinkSync(path),
  open: (path, flags) => fs.openSync(path, flags),
  fstat: (fd) => fs.fstatSync(fd),
  close: (fd) => fs.closeSync(fd),
  unlink: (path) => fs.unlinkSync(path),
  rmdir: (path) => fs.rmdirSync(path),
  run,
  kill: (pid, signal) => void process.kill(pid, signal),
}

/** A copy of `io` with some operations replaced: the way tests inject faults. */
export function withIo(io: Io, overrides: Partial<Io>): Io {
  return { ...io, ...overrides }
}

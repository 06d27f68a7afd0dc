/**
 * Shared pieces of the benchmarks: a scratch filesystem inside the benchmark's private mount
 * namespace, timing, medians and the table printer.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import { spawnSync } from 'node:child_process'

export function sh(script: string): string {
  const r = spawnSync('bash', ['-euo', 'pipefail', '-c', script], { encoding: 'utf8', maxBuffer: 64 << 20 })
  if (r.status !== 0) throw new Error(`bench shell failed: ${script.slice(0, 200)}\n${r.stderr}`)
  return r.stdout
}

export function assertPrivateNamespace(): void {
  if (process.getuid?.() !== 0) throw new Error('benchmarks need root (they mount filesystems): run `npm run bench` as root')
  // `npm run bench` starts us with unshare from a parent in the original namespace.
  if (fs.readlinkSync('/proc/self/ns/mnt') === fs.readlinkSync(`/proc/${process.ppid}/ns/mnt`)) {
    throw new Error('benchmarks must run in a private mount namespace: use `npm run bench`')
  }
}

/** Wall time of a command in ms (spawned, waited for; stdout discarded). */
export function timeCommand(argv: readonly string[], env: NodeJS.ProcessEnv = {}): { ms: number; status: number | null; stderr: string } {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 256 << 20 })
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  return { ms, status: r.status, stderr: r.stderr }
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

export function machineLine(): string {
  return `machine: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), kernel ${os.release()}, node ${process.version}`
}

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const fmt = (r: readonly string[]) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()
  return [fmt(header), fmt(widths.map((w) => '-'.repeat(w))), ...rows.map(fmt)].join('\n')
}

export const cli = ['node', 'dist/bin.js']

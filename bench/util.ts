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

// ---- fixtures and measurements shared by the removal benchmarks (remove.ts, btrfs.ts, rss.ts) ----

/**
 * Writes a chroot-like tree: `files` files of 64 B in `dirs` leaf directories, spread like a
 * real root (usr/lib and usr/share hold most). Deterministic: two calls give identical trees.
 * python3, because a shell loop is ~20× slower and `cp -a` of a template ~2× slower.
 */
export function makeTree(root: string, files: number, dirs: number): void {
  sh(`python3 - '${root}' ${files} ${dirs} <<'PY'
import os, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shape = [('usr/lib', 0.4), ('usr/share', 0.4), ('usr/include', 0.1), ('etc', 0.05), ('var/lib', 0.05)]
data = b'x' * 63 + b'\\n'
leaves = []
for i, (top, frac) in enumerate(shape):
    n = dirs - len(leaves) if i == len(shape) - 1 else int(dirs * frac)
    leaves += [f'{top}/d{j // 20:03}/e{j % 20:02}' for j in range(n)]
per, extra = divmod(files, dirs)
for k, leaf in enumerate(leaves):
    p = os.path.join(root, leaf)
    os.makedirs(p, exist_ok=True)
    for f in range(per + (1 if k < extra else 0)):
        fd = os.open(f'{p}/f{f:04}', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
PY`)
}

/** Number of entries (the root included) of a tree, as the removers count them. */
export function countEntries(root: string): number {
  return Number(sh(`find '${root}' | wc -l`).trim())
}

export interface Scratch {
  readonly dir: string
  /** A line for the report: what this filesystem is and how it is mounted. */
  readonly note: string
  remount(): void
  cleanup(): void
}

/** A tmpfs of `size` on a fresh directory (inside the benchmark's private mount namespace). */
export function benchTmpfs(prefix: string, size = '8g'): Scratch {
  const dir = sh(`mktemp -d /tmp/${prefix}XXXXXX`).trim()
  sh(`mount -t tmpfs -o size=${size} bench '${dir}' && mount --make-private '${dir}'`)
  return {
    dir,
    note: `tmpfs (size=${size})`,
    remount: () => {},
    cleanup: () => void sh(`umount -l '${dir}' || true; rmdir '${dir}' || true`),
  }
}

/**
 * A filesystem in an image file on the real disk (/var/tmp), through a loop device with
 * direct I/O, so that neither the image's page cache nor tmpfs flatters the figures. mkfs and
 * mount use their defaults. `remount()` empties the filesystem's caches (a purge meets a cold
 * chroot, built days before).
 */
export function benchLoopFs(kind: 'ext4' | 'btrfs', sizeGiB: number, prefix: string): Scratch {
  const image = sh(`mktemp /var/tmp/${prefix}XXXXXX.img`).trim()
  const dir = sh(`mktemp -d /tmp/${prefix}XXXXXX`).trim()
  let loop = ''
  try {
    sh(`truncate -s ${sizeGiB}G '${image}'`)
    sh(kind === 'ext4' ? `mkfs.ext4 -q -F '${image}'` : `mkfs.btrfs -q -f '${image}' >/dev/null`)
    loop = sh(`losetup --direct-io=on --show -f '${image}'`).trim()
    sh(`mount '${loop}' '${dir}' && mount --make-private '${dir}'`)
  } catch (err) {
    sh(`umount '${dir}' 2>/dev/null || true; [ -z '${loop}' ] || losetup -d '${loop}' || true; rm -f '${image}'; rmdir '${dir}' || true`)
    throw err
  }
  const opts = sh(`findmnt -n -o OPTIONS '${dir}'`).trim()
  return {
    dir,
    note: `${kind} in ${image} (${sizeGiB} GiB sparse, on the real disk) via ${loop} (direct I/O), mkfs defaults, mounted ${opts}`,
    remount: () => void sh(`sync -f '${dir}'; umount '${dir}' && mount '${loop}' '${dir}' && mount --make-private '${dir}'`),
    cleanup: () => void sh(`umount '${dir}' || umount -l '${dir}' || true; losetup -d '${loop}' || true; rm -f '${image}'; rmdir '${dir}' || true`),
  }
}

/** How the host's root filesystem is mounted (the issue notes ext4 with `discard` here). */
export function hostRootMount(): string {
  return sh(`findmnt -n -o FSTYPE,OPTIONS /`).trim().replace(/\s+/, ' ')
}

/** The dist/ module URL of a source module, for drivers run with plain node. */
export const distModule = (name: string): string => new URL(`../dist/${name}.js`, import.meta.url).href

/**
 * A driver that removes one chroot exactly as execute.ts does: a fresh mountinfo read, the
 * planned identity from lstat, then the remover; exits 1 and prints the result unless ok.
 */
export function removerDriver(root: string, remover: 'removeTree' | 'removeTreeParallel'): string[] {
  const mod = remover === 'removeTree' ? 'remove-tree' : 'remove-parallel'
  const script = `
    import * as fs from 'node:fs'
    const { ${remover} } = await import(${JSON.stringify(distModule(mod))})
    const { readMountTable } = await import(${JSON.stringify(distModule('mountinfo'))})
    const { systemIo } = await import(${JSON.stringify(distModule('io'))})
    const root = ${JSON.stringify(root)}
    const st = fs.lstatSync(root)
    const r = await ${remover}(root, { mountPoints: readMountTable(systemIo).mountPoints(), expect: { dev: st.dev, ino: st.ino } })
    if (!r.ok) { process.stderr.write(JSON.stringify(r).slice(0, 2000)); process.exitCode = 1 }`
  return ['node', '--input-type=module', '-e', script]
}

/** The real CLI on one chroot of a build root, as an admin runs it (default verbosity; the log goes to a pipe). */
export function purgeCommand(buildRoot: string, chroot: string, runLock: string): string[] {
  return [...cli, 'purge', '--run-lock', runLock, '--build-root', buildRoot, chroot]
}

/**
 * Peak memory of a command and everything it starts, sampled every 10 ms: the command's own
 * VmHWM, the largest sum of VmRSS over it and its descendants, and the largest RSS of the group
 * with shared pages counted once (Σ private + the largest shared). Summed RSS counts the node
 * binary's text (~34 MB, shared by every node process) once per process.
 */
export async function peakRss(argv: readonly string[]): Promise<{ ms: number; status: number | null; stderr: string; ownHwmKiB: number; rssKiB: number; groupKiB: number; processes: number }> {
  const { spawn } = await import('node:child_process')
  const t0 = process.hrtime.bigint()
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (d: string) => void (stderr = (stderr + d).slice(-2000)))
  const pid = child.pid!
  let ownHwmKiB = 0
  let rssKiB = 0
  let groupKiB = 0
  const seen = new Set<number>()
  const field = (text: string, name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0)
  const sample = (): void => {
    const parents = new Map<number, number>()
    for (const e of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue
      try {
        const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8')
        parents.set(Number(e), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]))
      } catch {
        // gone meanwhile
      }
    }
    const tree = [pid]
    for (let i = 0; i < tree.length; i++) for (const [p, pp] of parents) if (pp === tree[i]) tree.push(p)
    let rss = 0
    let priv = 0
    let shared = 0
    for (const p of tree) {
      try {
        const status = fs.readFileSync(`/proc/${p}/status`, 'utf8')
        const rollup = fs.readFileSync(`/proc/${p}/smaps_rollup`, 'utf8')
        rss += field(status, 'VmRSS')
        priv += field(rollup, 'Private_Clean') + field(rollup, 'Private_Dirty')
        shared = Math.max(shared, field(rollup, 'Shared_Clean') + field(rollup, 'Shared_Dirty'))
        if (p === pid) ownHwmKiB = Math.max(ownHwmKiB, field(status, 'VmHWM'))
        seen.add(p)
      } catch {
        // gone meanwhile
      }
    }
    rssKiB = Math.max(rssKiB, rss)
    groupKiB = Math.max(groupKiB, priv + shared)
  }
  const timer = setInterval(sample, 10)
  const status = await new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  clearInterval(timer)
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, status, stderr, ownHwmKiB, rssKiB, groupKiB, processes: seen.size }
}

export const fmtMs = (ms: number): string => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`)
export const fmtRate = (entries: number, ms: number): string => `${Math.round(entries / (ms / 1000) / 1000)}k/s`

/**
 * How much a second process really gets on this machine: the throughput of two CPU-bound
 * processes side by side over one alone (2.00 on two free cores). On a VM whose vCPUs share
 * a host core or are overcommitted it is far less, and so is any parallel speed-up.
 */
export function parallelCapacity(): string {
  const spin = ['node', '-e', 'let x = 0; for (let i = 0; i < 2e8; i++) x += i % 7; if (x < 0) console.log(x)']
  const both = ['bash', '-c', `${spin.map((a) => `'${a}'`).join(' ')} & ${spin.map((a) => `'${a}'`).join(' ')}; wait`]
  const ones: number[] = []
  const twos: number[] = []
  for (let i = 0; i < 3; i++) {
    ones.push(timeCommand(spin).ms) // interleaved: the host's load drifts
    twos.push(timeCommand(both).ms)
  }
  const one = median(ones)
  const two = median(twos)
  return `parallel capacity: two CPU-bound processes side by side do ${((2 * one) / two).toFixed(2)}× the work of one (2.00 = two free cores)`
}

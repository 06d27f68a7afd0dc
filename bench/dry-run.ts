/**
 * P3: the dry run over 100 chroots, 2,000 processes and 1,000 mounts (and 2×, 4× that), to
 * show the cost is low and grows linearly. The reference command, timed in the same run, is
 * the cheapest shell equivalent of the same reads: mountinfo, /proc/locks and every
 * process's root/cwd/exe links (`cat` + `ls -l /proc/[0-9]*`), with no matching at all.
 */
import { assertPrivateNamespace, cli, median, sh, table, timeCommand } from './util.js'

export interface DryRunFigures { readonly rows: string[][] }

export function benchDryRun(opts: { scales: readonly number[]; reps: number }): string {
  assertPrivateNamespace()
  const rows: string[][] = []
  let base = 0
  for (const k of opts.scales) {
    const chroots = 100 * k
    const processes = 2000 * k
    const mounts = 1000 * k
    const dir = sh('mktemp -d /tmp/bc-bench-dry-XXXXXX').trim()
    const pidFile = `${dir}.pids`
    try {
      sh(`mount -t tmpfs bench '${dir}' && mount --make-private '${dir}'
          br='${dir}/archbuild'
          for c in $(seq 0 $((${chroots} - 1))); do
            g="$br/group$((c % 4))-x86_64"; d="$g/copy$c"
            mkdir -p "$d"/{build,startdir,etc,usr,run} && : > "$d.lock"
            for m in $(seq 0 $((${mounts} / ${chroots} - 1))); do mkdir -p "$d/mnt/m$m"; done
          done
          mkdir -p "$br/group0-x86_64/root" && : > "$br/group0-x86_64/root.lock"`)
      // Mounts: one tmpfs per directory, via a single mount helper loop.
      sh(`cd '${dir}/archbuild' && for m in */*/mnt/m*; do mount -t tmpfs b "$m"; done`)
      // Processes: sleeps, one in ten with its cwd inside a chroot.
      sh(`cd '${dir}/archbuild'
          i=0; for d in */copy*/build; do cd "$d"; setsid sleep 900 </dev/null >/dev/null 2>&1 & echo $! >> '${pidFile}'; cd - >/dev/null; i=$((i+1)); done
          for n in $(seq $i $((${processes} - 1))); do setsid sleep 900 </dev/null >/dev/null 2>&1 & echo $! >> '${pidFile}'; done`)
      const ours: number[] = []
      const ref: number[] = []
      for (let r = 0; r < opts.reps; r++) {
        const a = timeCommand([...cli, '--dry-run', '--json', '--quiet', '--build-root', `${dir}/archbuild`])
        if (a.status !== 0) throw new Error(`dry run failed: ${a.stderr}`)
        ours.push(a.ms)
        ref.push(timeCommand(['bash', '-c', 'cat /proc/self/mountinfo /proc/locks >/dev/null; ls -l /proc/[0-9]*/{root,cwd,exe} >/dev/null 2>&1; true']).ms)
      }
      const m = median(ours)
      if (k === opts.scales[0]) base = m
      rows.push([`${k}×`, String(chroots), String(processes), String(mounts), `${m.toFixed(0)} ms`, `${median(ref).toFixed(0)} ms`,
        (m / median(ref)).toFixed(2), (m / base).toFixed(2)])
    } finally {
      // Kill exactly the processes we started (never every `sleep` on the machine).
      sh(`[ -f '${pidFile}' ] && xargs -r kill -KILL < '${pidFile}' || true; rm -f '${pidFile}'
          umount -R -l '${dir}' || true; rmdir '${dir}' || true`)
    }
  }
  return table(['scale', 'chroots', 'processes', 'mounts', 'dry run (median)', 'reference', 'ratio', 'vs 1×'], rows)
}

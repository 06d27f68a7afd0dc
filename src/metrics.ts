/**
 * Run metrics for node_exporter's textfile collector (`--metrics-file`, e.g.
 * /var/lib/prometheus/node-exporter/build_cleaner.prom), so a cleaner that silently stopped
 * working — timer disabled, every run failing — raises an alert before the disk fills up.
 *
 * - The collector may read the file at any moment: it must never see it half-written. We write
 *   a temporary file in the same directory (same filesystem, so rename(2) is atomic; its name
 *   starts with a dot and does not end in .prom, so the collector ignores it), fsync it, rename
 *   it over the target and fsync the directory. On any error the temporary file is removed.
 * - The directory may belong to the exporter's user: the temporary file is created with
 *   O_EXCL|O_NOFOLLOW under an unpredictable name, so a planted symlink redirects nothing, and
 *   the previous file is read with O_NOFOLLOW|O_NONBLOCK and checked on its descriptor.
 * - The service runs with UMask=0077, but node_exporter runs as another user: the file is
 *   fchmod'ed to 0644 explicitly.
 * - A failed run keeps the last success timestamp of the previous file, so
 *   `time() - build_cleaner_last_success_timestamp_seconds > 2 * 3600` alerts on a cleaner
 *   that runs but keeps failing. 0 means no success is known.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { CleanerError, errnoOf } from './errors.js'

export interface RunMetrics {
  /** Milliseconds since the epoch (Date.now()). */
  startedAt: number
  finishedAt: number
  /** Exit status 0: every planned step done. */
  success: boolean
  outcomes: { removed: number; detached: number; kept: number; failed: number }
  freedBytes: number
}

const LAST_SUCCESS = 'build_cleaner_last_success_timestamp_seconds'
const O_CLOEXEC = 0o2000000
const MAX_PREVIOUS_BYTES = 1024 * 1024

/** Prometheus text exposition format (version 0.0.4), ending in a newline. Pure. */
export function renderMetrics(m: RunMetrics, previousLastSuccess?: number): string {
  const lines: string[] = []
  const gauge = (name: string, help: string, samples: [labels: string, value: number][]) => {
    lines.push(`# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${name} gauge`)
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${formatValue(value)}`)
  }
  const seconds = (ms: number) => ms / 1000
  const lastSuccess = m.success ? seconds(m.finishedAt) : previousLastSuccess ?? 0
  gauge('build_cleaner_last_run_timestamp_seconds', 'When the last run finished, in seconds since the epoch.', [['', seconds(m.finishedAt)]])
  gauge(LAST_SUCCESS, 'When the last successful run (exit status 0) finished, in seconds since the epoch; 0 if none is known.', [['', lastSuccess]])
  gauge('build_cleaner_last_run_success', '1 if the last run succeeded (exit status 0), else 0.', [['', m.success ? 1 : 0]])
  gauge(
    'build_cleaner_chroots',
    'Chroots by outcome in the last run.',
    (['removed', 'detached', 'kept', 'failed'] as const).map((outcome) => [`{outcome="${escapeLabel(outcome)}"}`, m.outcomes[outcome]]),
  )
  gauge('build_cleaner_freed_bytes', 'Bytes freed by the last run (growth of the available space across deletions).', [['', m.freedBytes]])
  gauge('build_cleaner_duration_seconds', 'How long the last run took.', [['', Math.max(0, seconds(m.finishedAt - m.startedAt))]])
  return lines.join('\n') + '\n'
}

/** Go's float syntax, as Prometheus parses it: NaN, +Inf, -Inf, or a decimal. */
function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN'
  if (!Number.isFinite(v)) return v > 0 ? '+Inf' : '-Inf'
  return String(v)
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}

/** Replaces `file` with `text` so that a reader sees either the old or the new file, whole. */
export function writeMetricsAtomically(file: string, text: string): void {
  const dir = path.dirname(file)
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`)
  let step = 'open'
  let target = temp
  let fd: number | undefined
  try {
    const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants
    fd = fs.openSync(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
    step = 'write'
    fs.writeFileSync(fd, text)
    step = 'fchmod'
    fs.fchmodSync(fd, 0o644)
    step = 'fsync'
    fs.fsyncSync(fd)
    step = 'close'
    const written = fd
    fd = undefined
    fs.closeSync(written)
    step = 'rename'
    target = file
    fs.renameSync(temp, file)
  } catch (err) {
    try {
      if (fd !== undefined) fs.closeSync(fd)
    } finally {
      if (step !== 'open') fs.rmSync(temp, { force: true }) // never someone else's file: ours was O_EXCL
    }
    throw new CleanerError('ESYS', `cannot write metrics file ${file}: ${step} '${target}': ${errnoOf(err) ?? String(err)}`, {
      path: file,
      syscall: step,
      cause: err,
    })
  }
  syncDirectory(dir)
}

/** Makes the rename durable. A directory that cannot be fsynced (some filesystems) is no error. */
function syncDirectory(dir: string): void {
  let fd: number | undefined
  try {
    fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | O_CLOEXEC)
    fs.fsyncSync(fd)
  } catch {
    // the file is in place either way; only its durability across a crash is in question
  } finally {
    if (fd !== undefined) fs.closeSync(fd)
  }
}

/**
 * The last success timestamp of a previous metrics file: undefined when there is no file or
 * it has no such sample; CleanerError('EPARSE') naming the line when the sample is malformed,
 * CleanerError('ESYS') when the file cannot be read safely (a symlink, a FIFO, too large).
 */
export function readLastSuccess(file: string): number | undefined {
  let fd: number
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK | O_CLOEXEC)
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined
    const why = errnoOf(err) === 'ELOOP' ? 'it is a symlink' : errnoOf(err) ?? String(err)
    throw new CleanerError('ESYS', `cannot read the previous metrics file ${file}: ${why}`, { path: file, syscall: 'open', cause: err })
  }
  let text: string
  try {
    const st = fs.fstatSync(fd)
    if (!st.isFile() || st.size > MAX_PREVIOUS_BYTES) {
      throw new CleanerError('ESYS', `cannot read the previous metrics file ${file}: not a regular file of at most 1 MiB`, { path: file, syscall: 'fstat' })
    }
    text = fs.readFileSync(fd, 'utf8')
  } finally {
    fs.closeSync(fd)
  }
  return parseLastSuccess(text, file)
}

/** Pure: the last success sample of metrics text, or undefined if there is none. */
export function parseLastSuccess(text: string, source: string): number | undefined {
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    if (!line.startsWith(LAST_SUCCESS) || !/[\s{]/.test(line.charAt(LAST_SUCCESS.length))) continue
    const m = /^\S+ ([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)$/.exec(line)
    if (!m) throw new CleanerError('EPARSE', `${source}:${i + 1}: malformed ${LAST_SUCCESS} sample: ${JSON.stringify(line.slice(0, 120))}`, { path: source })
    return Number(m[1])
  }
  return undefined
}

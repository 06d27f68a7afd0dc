/**
 * Stage 4, "report": the plan (and, after a real run, the outcomes) as a human table, as the
 * JSON object scripts build on, and as the one summary line every run ends with. Pure.
 */
import * as path from 'node:path'
import type { Decision } from './plan.js'
import { formatAge, formatBytes } from './duration.js'

export type Outcome = 'removed' | 'detached' | 'kept' | 'failed'

export interface Result {
  readonly decision: Decision
  readonly outcome: Outcome
  /** Why it ended as it did when that differs from the plan (kept on re-check, failed). */
  readonly error?: string
  readonly notes?: readonly string[]
  readonly freedBytes: number
}

export interface Summary {
  readonly chroots: number
  readonly remove: number
  readonly detach: number
  readonly keep: number
  readonly removed?: number
  readonly detached?: number
  readonly kept?: number
  readonly failed?: number
  readonly freedBytes?: number
}

export function summarize(decisions: readonly Decision[], results?: readonly Result[]): Summary {
  const count = <T>(items: readonly T[], pick: (t: T) => boolean) => items.filter(pick).length
  const base = {
    chroots: decisions.length,
    remove: count(decisions, (d) => d.action === 'remove'),
    detach: count(decisions, (d) => d.action === 'detach'),
    keep: count(decisions, (d) => d.action === 'keep'),
  }
  if (!results) return base
  return {
    ...base,
    removed: count(results, (r) => r.outcome === 'removed'),
    detached: count(results, (r) => r.outcome === 'detached'),
    kept: count(results, (r) => r.outcome === 'kept'),
    failed: count(results, (r) => r.outcome === 'failed'),
    freedBytes: results.reduce((sum, r) => sum + r.freedBytes, 0),
  }
}

/** The one line every run ends with. */
export function summaryLine(summary: Summary, dryRun: boolean): string {
  if (dryRun) {
    return `dry run: ${summary.chroots} chroots: would remove ${summary.remove}, detach ${summary.detach}, keep ${summary.keep}`
  }
  return (
    `removed ${summary.removed ?? 0} (${formatBytes(summary.freedBytes ?? 0)} freed), detached ${summary.detached ?? 0}, ` +
    `kept ${summary.kept ?? 0}, failed ${summary.failed ?? 0}`
  )
}

function kindOf(d: Decision): 'root' | 'copy' | 'group' {
  if (d.group) return 'group'
  return d.chroot?.kind ?? (path.basename(d.path) === 'root' ? 'root' : 'copy')
}

function chrootJson(d: Decision) {
  const c = d.chroot
  return {
    path: d.path,
    kind: kindOf(d),
    action: d.action,
    reasons: d.reasons,
    lastUsed: c ? new Date(c.lastUsed).toISOString() : null,
    lockHolders: (c?.lockHolders ?? []).map((h) => ({ pid: h.pid, command: h.command })),
    users: (c?.users ?? []).map((u) => ({ pid: u.pid, command: u.command, how: u.how })),
    mounts: c?.mounts ?? [],
    btrfsSubvolume: c?.btrfsSubvolume ?? false,
  }
}

/** `warnings`: what the run could not see (unreadable processes), for scripts to surface. */
export function toJson(
  decisions: readonly Decision[],
  results?: readonly Result[],
  warnings: readonly string[] = [],
  freeSpace?: readonly object[],
): string {
  const byPath = new Map(results?.map((r) => [r.decision.path, r]))
  const chroots = decisions.map((d) => {
    const r = byPath.get(d.path)
    if (!results) return chrootJson(d)
    return {
      ...chrootJson(d),
      outcome: r?.outcome ?? 'kept',
      ...(r?.error === undefined ? {} : { error: r.error }),
      ...(r?.notes?.length ? { notes: r.notes } : {}),
      freedBytes: r?.freedBytes ?? 0,
    }
  })
  const extra = freeSpace && freeSpace.length > 0 ? { freeSpace } : {}
  return JSON.stringify({ dryRun: !results, chroots, warnings, ...extra, summary: summarize(decisions, results) }, null, 2)
}

/** A plain-text table: chroot, action (→ outcome), last used, reasons. */
export function toTable(decisions: readonly Decision[], now: number, results?: readonly Result[]): string {
  const byPath = new Map(results?.map((r) => [r.decision.path, r]))
  const rows = decisions.map((d) => {
    const r = byPath.get(d.path)
    const action = r ? `${d.action} → ${r.outcome}` : d.action
    const used = d.chroot ? `${formatAge(now - d.chroot.lastUsed)} ago` : '-'
    const reasons = [...d.reasons, ...(r?.notes ?? []), ...(r?.error ? [`error: ${r.error}`] : [])].join('; ')
    return [d.path, action, used, reasons]
  })
  const header = ['CHROOT', results ? 'ACTION → OUTCOME' : 'ACTION', 'LAST USED', 'REASONS']
  const widths = header.slice(0, 3).map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)))
  const fmt = (cells: string[]) =>
    cells.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]!) : cell)).join('  ').trimEnd()
  if (rows.length === 0) return 'no chroots found'
  return [fmt(header), ...rows.map(fmt)].join('\n')
}

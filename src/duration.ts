/**
 * Durations ("36h", "7d", "90m") and sizes ("60G") from flags and config, with messages
 * that name the field, what was expected and what came.
 */
import ms from 'ms'
import { CleanerError } from './errors.js'

export function parseDuration(field: string, value: string): number {
  // A unit is required: a bare "5" would mean 5 ms to `ms`, and "--max-age 5" deleting
  // every copy is not what anyone meant.
  const parsed = /^\s*\d+(\.\d+)?\s*[a-z]+\s*$/i.test(value) ? ms(value as ms.StringValue) : undefined
  if (typeof parsed !== 'number' || !Number.isFinite(parsed) || parsed <= 0) {
    throw new CleanerError('EUSAGE', `${field} must be a duration like "7d", "36h" or "90m", got ${JSON.stringify(value)}`)
  }
  return parsed
}

/** "3h", "9d": the age as a person reads it. */
export function formatAge(ageMs: number): string {
  return ms(Math.max(0, Math.round(ageMs)))
}

const GiB = 1024 ** 3
/** Bytes as "1.5 GiB" / "12.0 MiB". */
export function formatBytes(bytes: number): string {
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(1)} GiB`
  if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`
  return `${bytes} B`
}

/**
 * Sizes from flags and config ("60G", "512MiB", "1.5T", "100GB", "4096") in bytes.
 *
 * Units, case-insensitive, with optional space before them:
 * - K, M, G, T and KiB, MiB, GiB, TiB are powers of 1024: "60G" = "60GiB" = 60 × 1024³ bytes,
 *   as `df -h`, `du -h` and btrfs print them — the numbers an admin copies into the config;
 * - KB, MB, GB, TB are powers of 1000 (SI), as disk vendors count;
 * - B or no unit: bytes, and then the number must be whole.
 * A fraction is allowed with a unit ("1.5T") and rounds to whole bytes.
 */
import { CleanerError } from './errors.js'

const POWER: Record<string, number> = { '': 0, k: 1, m: 2, g: 3, t: 4 }

export function parseSize(field: string, value: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(ib|b)?|(b))?\s*$/i.exec(value)
  const bad = () =>
    new CleanerError('EUSAGE', `${field} must be a size like "60G", "512MiB" or "100GB", got ${JSON.stringify(value)}`)
  if (!m) throw bad()
  const [, number, prefix = '', suffix = ''] = m
  const base = suffix.toLowerCase() === 'b' ? 1000 : 1024
  if (prefix === '' && number!.includes('.')) throw bad() // "1.5" or "1.5B": a fraction of a byte
  const bytes = Math.round(Number(number) * base ** POWER[prefix.toLowerCase()]!)
  if (!Number.isSafeInteger(bytes)) throw bad()
  return bytes
}

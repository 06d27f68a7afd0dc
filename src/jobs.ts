/**
 * How many walkers a deletion uses (`--jobs`, config `jobs`): the process itself and jobs − 1
 * helper processes (remove-parallel.ts). 1 means no helper at all. The default is one per core,
 * at most 4 (more walkers than cores did not help in `npm run bench`: README, Performance).
 */
import * as os from 'node:os'
import { CleanerError } from './errors.js'

export const MAX_JOBS = 64
const MAX_DEFAULT_JOBS = 4

export function defaultJobs(): number {
  return Math.max(1, Math.min(os.availableParallelism(), MAX_DEFAULT_JOBS))
}

/** A whole number from 1 to MAX_JOBS, from a flag (a string) or the config file (a number). */
export function parseJobs(field: string, value: unknown): number {
  const n = typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : value
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_JOBS) {
    throw new CleanerError('EUSAGE', `${field} must be a whole number from 1 to ${MAX_JOBS} (1: no helper processes), got ${JSON.stringify(value)}`)
  }
  return n
}

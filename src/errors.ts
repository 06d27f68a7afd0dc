/**
 * Typed errors with stable codes. A CleanerError is something we expected could go wrong
 * (bad input, a refusal, a failed syscall on a hostile tree) and is printed without a stack;
 * anything else reaching the top is a bug and is printed with one.
 */
export type ErrorCode =
  | 'EUSAGE' // bad flag or value: exit 2
  | 'ECONFIG' // bad config file: exit 2
  | 'EPATH' // bad path argument or build root: exit 2
  | 'EPARSE' // malformed /proc text
  | 'EREFUSED' // a safety refusal
  | 'ELOCKED' // a lock is held by someone else
  | 'EBUSYCHROOT' // a live process uses the chroot
  | 'EMOUNTED' // mounts remain below a chroot
  | 'EUNMOUNT' // mount/umount failed
  | 'EBTRFS' // btrfs subvolume handling failed
  | 'EREMOVE' // the tree could not be removed completely
  | 'ERUNNING' // another build-cleaner run is active: exit 75
  | 'ESYS' // a syscall failed

export interface ErrorDetails {
  path?: string | undefined
  syscall?: string | undefined
  cause?: unknown
}

export class CleanerError extends Error {
  readonly code: ErrorCode
  readonly path: string | undefined
  readonly syscall: string | undefined

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause })
    this.name = 'CleanerError'
    this.code = code
    this.path = details.path
    this.syscall = details.syscall
  }
}

/** Errors that mean "bad input, nothing was touched": the CLI exits 2 for these. */
export function isInputError(err: unknown): err is CleanerError {
  return err instanceof CleanerError && (err.code === 'EUSAGE' || err.code === 'ECONFIG' || err.code === 'EPATH')
}

/** The errno code of a Node system error (`ENOENT`, `EBUSY`…), or undefined. */
export function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : undefined
}

/** A vanished file or process: the one race we tolerate silently. */
export function isVanished(err: unknown): boolean {
  const code = errnoOf(err)
  return code === 'ENOENT' || code === 'ESRCH'
}

/** "unlink '/x/y': EBUSY" — what a system error says, with its syscall and path. */
export function describeSystemError(err: unknown): string {
  const e = err as { code?: string; syscall?: string; path?: string; message?: string }
  if (e?.code && e.syscall) return `${e.syscall} '${e.path ?? '?'}': ${e.code}`
  return e?.message ?? String(err)
}

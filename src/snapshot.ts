/**
 * Stage 1, "look": one read-only pass over the system that every chroot shares — discovery,
 * one mountinfo read, one /proc/locks read and ONE scan of /proc (never one per chroot).
 * Nothing here writes, creates, opens for writing or locks anything: the dry run is this
 * plus a pure planner.
 */
import type { Io } from './io.js'
import { discover, type ChrootFacts, type Refusal } from './discover.js'
import { readMountTable, type MountTable } from './mountinfo.js'
import { parseLocks, findLockHolders, type LockHolder } from './locks.js'
import { scanProcesses, usersOfChroots, type ChrootUse, type ProcessScan } from './processes.js'

export interface ChrootSnapshot extends ChrootFacts {
  /** Mount points at or below the chroot, in mountinfo order. */
  readonly mounts: readonly string[]
  readonly lockHolders: readonly LockHolder[]
  readonly users: readonly ChrootUse[]
}

export interface Snapshot {
  readonly takenAt: number
  readonly buildRoots: readonly string[]
  readonly chroots: readonly ChrootSnapshot[]
  readonly refused: readonly Refusal[]
  /** Processes that could not be read: they might use any chroot. */
  readonly unreadable: ProcessScan['unreadable']
}

export async function takeSnapshot(io: Io, buildRoots: readonly string[], now: number = Date.now()): Promise<Snapshot> {
  const found = await discover(io, buildRoots)
  const mounts = readMountTable(io)
  const locks = parseLocks(io.readFile('/proc/locks'))
  const scan = scanProcesses(io)
  const users = usersOfChroots(scan, found.chroots)

  const chroots = found.chroots.map((chroot): ChrootSnapshot => ({
    ...chroot,
    mounts: mounts.below(chroot.path).map((m) => m.mountPoint),
    lockHolders: chroot.lockFile ? lockHoldersOf(io, mounts, locks, chroot) : [],
    users: users.get(chroot.path) ?? [],
  }))
  return { takenAt: now, buildRoots: found.buildRoots, chroots, refused: found.refused, unreadable: scan.unreadable }
}

function lockHoldersOf(io: Io, mounts: MountTable, locks: ReturnType<typeof parseLocks>, chroot: ChrootFacts): LockHolder[] {
  const lockFile = chroot.lockFile!
  const mount = mounts.mountOf(lockFile.path)
  return findLockHolders(io, locks, {
    path: lockFile.path,
    dev: lockFile.dev,
    ino: lockFile.ino,
    ...(mount ? { fsDev: { major: mount.major, minor: mount.minor } } : {}),
    btrfs: chroot.fsType === 'btrfs',
  })
}

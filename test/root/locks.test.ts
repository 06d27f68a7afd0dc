/**
 * findLockHolders against the real kernel: flock(1), POSIX (lockf) and OFD locks held by
 * live helper processes in a scratch tmpfs; the stale-pid case (the `flock` process killed,
 * its child keeping the lock); and btrfs, where /proc/locks shows the filesystem's device
 * and two lock files in fresh subvolumes share one inode number (KERNEL-NOTES "Locks").
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { systemIo } from '../../src/io.js'
import { decodeDev, findLockHolders, parseLocks, type LockEntry, type LockTarget } from '../../src/locks.js'
import { readMountTable } from '../../src/mountinfo.js'
import { assertRootSandbox, scratchTmpfs, sh } from '../helpers/sys.js'

assertRootSandbox()

const POSIX_LOCK = `
import fcntl, sys, time
f = open(sys.argv[1], 'r+')
fcntl.lockf(f, fcntl.LOCK_EX)
time.sleep(60)
`
// F_OFD_SETLK is 37 on Linux; struct flock is short, short, (pad), off_t, off_t, pid_t, (pad).
const OFD_LOCK = `
import fcntl, struct, sys, time
f = open(sys.argv[1], 'r+')
fcntl.fcntl(f, 37, struct.pack('hhxxxxqqixxxx', fcntl.F_WRLCK, 0, 0, 0, 0))
time.sleep(60)
`

/** Helper processes of one test; each in its own process group, so a kill takes its children. */
class Helpers {
  readonly #all: ChildProcess[] = []

  start(file: string, args: readonly string[]): number {
    const child = spawn(file, args, { detached: true, stdio: 'ignore' })
    this.#all.push(child)
    if (child.pid === undefined) throw new Error(`could not start ${file}`)
    return child.pid
  }

  /** Kills the one process (not its group) and waits until it is reaped: its pid is gone. */
  async killOnly(pid: number): Promise<void> {
    const child = this.#all.find((c) => c.pid === pid)!
    const exited = exitOf(child)
    process.kill(pid, 'SIGKILL')
    await exited
  }

  async stopAll(): Promise<void> {
    for (const child of this.#all) {
      const exited = exitOf(child)
      try {
        process.kill(-child.pid!, 'SIGKILL')
      } catch {
        // the whole group is gone already
      }
      await exited
    }
  }
}

function exitOf(child: ChildProcess): Promise<unknown> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : once(child, 'exit')
}

/** The /proc/locks entries on `file`'s inode once `ready` says so (the helpers lock asynchronously). */
async function waitForLocks(file: string, ready: (entries: LockEntry[]) => boolean): Promise<LockEntry[]> {
  const ino = fs.lstatSync(file).ino
  for (let tries = 0; tries < 250; tries++) {
    const entries = parseLocks(fs.readFileSync('/proc/locks', 'utf8'))
    const mine = entries.filter((e) => e.inode === ino)
    if (ready(mine)) return entries
    await sleep(20)
  }
  throw new Error(`timed out waiting for the lock on ${file}`)
}

function targetOf(file: string, extra: Partial<LockTarget> = {}): LockTarget {
  const st = fs.lstatSync(file)
  return { path: file, dev: st.dev, ino: st.ino, btrfs: false, ...extra }
}

/** `flock -n -E 75 FILE true`: 75 when held, 0 when free (KERNEL-NOTES). */
function flockProbe(file: string): number | null {
  return spawnSync('flock', ['-n', '-E', '75', file, 'true']).status
}

test('flock, POSIX and OFD locks on tmpfs: the right pid and command; nobody for an unlocked file', async () => {
  const scratch = scratchTmpfs('bc-locks-')
  const helpers = new Helpers()
  try {
    const [a, b, c, free] = ['a.lock', 'b.lock', 'c.lock', 'free.lock'].map((n) => path.join(scratch.dir, n)) as [string, string, string, string]
    for (const f of [a, b, c, free]) fs.writeFileSync(f, '')
    // /proc/locks speaks hex MAJ:MIN; decodeDev must agree with stat's decimal major:minor
    const { major, minor } = decodeDev(fs.lstatSync(a).dev)
    assert.is(`${major}:${minor}`, sh(`stat -c %Hd:%Ld ${a}`).trim())

    const flocker = helpers.start('flock', [a, 'sleep', '60'])
    const posix = helpers.start('python3', ['-c', POSIX_LOCK, b])
    const ofd = helpers.start('python3', ['-c', OFD_LOCK, c])
    await waitForLocks(a, (m) => m.some((e) => e.kind === 'FLOCK'))
    await waitForLocks(b, (m) => m.some((e) => e.kind === 'POSIX'))
    // a second flock queues behind the first: a `->` waiter, not a holder
    const waiter = helpers.start('flock', [a, 'true'])
    const entries = await waitForLocks(c, (m) => m.some((e) => e.kind === 'OFDLCK'))
    const all = await waitForLocks(a, (m) => m.some((e) => e.blocked && e.pid === waiter))
    assert.ok(entries.length > 0 && all.length > 0)

    const ofdEntry = all.find((e) => e.kind === 'OFDLCK' && e.inode === fs.lstatSync(c).ino)!
    assert.ok(ofdEntry.pid === -1 || ofdEntry.pid === ofd, `OFD lock listed with pid ${ofdEntry.pid}`)

    assert.equal(findLockHolders(systemIo, all, targetOf(a)), [{ pid: flocker, command: 'flock', kind: 'FLOCK', pidGone: false }])
    assert.equal(findLockHolders(systemIo, all, targetOf(b)), [{ pid: posix, command: 'python3', kind: 'POSIX', pidGone: false }])
    assert.equal(findLockHolders(systemIo, all, targetOf(c)), [{ pid: ofd, command: 'python3', kind: 'OFDLCK', pidGone: false }])
    assert.equal(findLockHolders(systemIo, all, targetOf(free)), [])
    assert.is(flockProbe(free), 0)
  } finally {
    await helpers.stopAll()
    scratch.cleanup()
  }
})

test('the listed pid is gone: a child kept the lock, which still counts (pidGone)', async () => {
  const scratch = scratchTmpfs('bc-locks-')
  const helpers = new Helpers()
  try {
    const file = path.join(scratch.dir, 'user.lock')
    fs.writeFileSync(file, '')
    const flocker = helpers.start('flock', [file, 'sh', '-c', 'sleep 60 & wait'])
    await waitForLocks(file, (m) => m.some((e) => e.pid === flocker))
    await helpers.killOnly(flocker)
    assert.not.ok(fs.existsSync(`/proc/${flocker}`), 'the flock process is reaped')

    const entries = await waitForLocks(file, (m) => m.length > 0)
    const listed = entries.filter((e) => e.inode === fs.lstatSync(file).ino)
    assert.equal(listed.map((e) => [e.kind, e.pid]), [['FLOCK', flocker]], 'the kernel still lists the dead pid')
    assert.is(flockProbe(file), 75, 'and the lock is really held')
    assert.equal(findLockHolders(systemIo, entries, targetOf(file)), [{ pid: flocker, command: '?', kind: 'FLOCK', pidGone: true }])
  } finally {
    await helpers.stopAll()
    scratch.cleanup()
  }
})

test('btrfs: filesystem device and a shared inode in /proc/locks; the holder is told apart by its descriptor', async () => {
  const scratch = scratchTmpfs('bc-locks-btrfs-')
  const helpers = new Helpers()
  const mnt = path.join(scratch.dir, 'mnt')
  let loop = ''
  try {
    const img = path.join(scratch.dir, 'img')
    sh(`truncate -s 200M ${img} && mkfs.btrfs -q ${img} >/dev/null 2>&1`)
    loop = sh(`losetup --find --show ${img}`).trim()
    fs.mkdirSync(mnt)
    sh(`mount -t btrfs ${loop} ${mnt} && btrfs -q subvolume create ${mnt}/one && btrfs -q subvolume create ${mnt}/two`)
    const [locked, twin] = [path.join(mnt, 'one', 'user.lock'), path.join(mnt, 'two', 'user.lock')]
    fs.writeFileSync(locked, '')
    fs.writeFileSync(twin, '')
    const [sl, st] = [fs.lstatSync(locked), fs.lstatSync(twin)]
    assert.is(sl.ino, st.ino, 'first files in fresh subvolumes share an inode number')
    assert.is.not(sl.dev, st.dev, 'each subvolume has its own st_dev')

    const mount = readMountTable(systemIo).mountOf(locked)!
    assert.is(mount.mountPoint, mnt)
    const fsDev = { major: mount.major, minor: mount.minor }

    const flocker = helpers.start('flock', [locked, 'sleep', '60'])
    const entries = await waitForLocks(locked, (m) => m.some((e) => e.pid === flocker))
    const entry = entries.find((e) => e.pid === flocker)!
    // the kernel fact this module exists for: the mount's device, not the subvolume's
    assert.equal({ major: entry.major, minor: entry.minor }, fsDev)
    assert.not.equal({ major: entry.major, minor: entry.minor }, decodeDev(sl.dev))

    const btrfs = { fsDev, btrfs: true }
    assert.equal(findLockHolders(systemIo, entries, targetOf(locked, btrfs)), [{ pid: flocker, command: 'flock', kind: 'FLOCK', pidGone: false }])
    assert.equal(findLockHolders(systemIo, entries, targetOf(twin, btrfs)), [])
    assert.is(flockProbe(twin), 0, 'the twin is really free')
    // matching on st_dev alone (as on other filesystems) would miss the holder
    assert.equal(findLockHolders(systemIo, entries, targetOf(locked)), [])
  } finally {
    await helpers.stopAll()
    spawnSync('umount', [mnt])
    if (loop) spawnSync('losetup', ['-d', loop])
    scratch.cleanup()
  }
})

test.run()

import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { plan } from '../../src/plan.js'
import type { ChrootSnapshot, Snapshot } from '../../src/snapshot.js'

const HOUR = 3600_000
const DAY = 24 * HOUR
const NOW = Date.parse('2026-11-29T12:00:00Z')

function chroot(name: string, over: Partial<ChrootSnapshot> = {}): ChrootSnapshot {
  const path = `/var/lib/archbuild/extra-x86_64/${name}`
  return {
    path,
    buildRoot: '/var/lib/archbuild',
    group: 'extra-x86_64',
    name,
    kind: name === 'root' ? 'root' : 'copy',
    dev: 2049,
    ino: 1000 + name.length,
    lockFile: { path: `${path}.lock`, dev: 2049, ino: 2000 + name.length },
    lastUsed: NOW - 30 * DAY,
    btrfsSubvolume: false,
    fsType: 'other',
    mounts: [],
    lockHolders: [],
    users: [],
    ...over,
  }
}

function snapshot(chroots: ChrootSnapshot[], over: Partial<Snapshot> = {}): Snapshot {
  return { takenAt: NOW, buildRoots: ['/var/lib/archbuild'], chroots, refused: [], unreadable: [], ...over }
}

const policy = { maxAgeMs: 7 * DAY }
const one = (s: Snapshot) => {
  const [d, ...rest] = plan(s, policy)
  assert.is(rest.length, 0)
  return d!
}

test('a stale, idle copy is removed, with the age in the reason', () => {
  const d = one(snapshot([chroot('alice')]))
  assert.is(d.action, 'remove')
  assert.equal(d.reasons, ['stale: last used 30d ago (max age 7d)'])
})

test('a copy used 3h ago is kept as fresh', () => {
  const d = one(snapshot([chroot('alice', { lastUsed: NOW - 3 * HOUR })]))
  assert.is(d.action, 'keep')
  assert.equal(d.reasons, ['fresh: last used 3h ago (max age 7d)'])
})

test('exactly at max age is not yet stale', () => {
  assert.is(one(snapshot([chroot('alice', { lastUsed: NOW - 7 * DAY })])).action, 'keep')
  assert.is(one(snapshot([chroot('alice', { lastUsed: NOW - 7 * DAY - 1 })])).action, 'remove')
})

test('a stale copy whose lock is held (any type) is kept, naming the holder', () => {
  const d = one(snapshot([chroot('bob', { lockHolders: [{ pid: 4242, command: 'makechrootpkg', kind: 'FLOCK', pidGone: false }] })]))
  assert.is(d.action, 'keep')
  assert.equal(d.reasons, ['locked by pid 4242 (makechrootpkg)'])
  const posix = one(snapshot([chroot('bob', { lockHolders: [{ pid: 9, command: 'python3', kind: 'POSIX', pidGone: false }] })]))
  assert.is(posix.action, 'keep')
})

test('a lock whose listed pid is gone still keeps the copy', () => {
  const d = one(snapshot([chroot('bob', { lockHolders: [{ pid: 77, command: '?', kind: 'FLOCK', pidGone: true }] })]))
  assert.is(d.action, 'keep')
  assert.match(d.reasons[0]!, /locked by pid 77 \(exited; the lock is still held/)
})

test('a stale copy used by a process is kept, naming pid, command and how', () => {
  const d = one(snapshot([chroot('carol', { users: [{ pid: 777, command: 'sleep', how: 'root' }] })]))
  assert.is(d.action, 'keep')
  assert.equal(d.reasons, ['used by pid 777 (sleep): root'])
})

test('the master root is never removed, however old', () => {
  const d = one(snapshot([chroot('root', { lastUsed: NOW - 400 * DAY })]))
  assert.is(d.action, 'keep')
  assert.match(d.reasons[0]!, /master root/)
})

test('an idle, polluted root is detached (seed incident 1)', () => {
  const d = one(snapshot([chroot('root', { mounts: ['/var/lib/archbuild/extra-x86_64/root/run'] })]))
  assert.is(d.action, 'detach')
  assert.match(d.reasons[0]!, /leaked mounts: .*root\/run/)
})

test('a polluted root that is locked is kept, not detached', () => {
  const d = one(snapshot([chroot('root', { mounts: ['/x/run'], lockHolders: [{ pid: 1, command: 'mkarchroot', kind: 'FLOCK', pidGone: false }] })]))
  assert.is(d.action, 'keep')
})

test('a fresh copy with leaked mounts is detached; a stale one is removed (mounts detached first)', () => {
  const fresh = one(snapshot([chroot('dave', { lastUsed: NOW - HOUR, mounts: ['/x/dave/tmp'] })]))
  assert.is(fresh.action, 'detach')
  const stale = one(snapshot([chroot('dave', { mounts: ['/x/dave/run'] })]))
  assert.is(stale.action, 'remove')
  assert.match(stale.reasons.join(';'), /leaked mounts/)
})

test('a symlink found where a chroot should be is kept with its reason', () => {
  const s = snapshot([], { refused: [{ path: '/var/lib/archbuild/extra-x86_64/evil', reason: 'symlink: not followed' }] })
  const d = one(s)
  assert.is(d.action, 'keep')
  assert.equal(d.reasons, ['symlink: not followed'])
  assert.is(d.chroot, undefined)
})

test('decisions come sorted by path and every chroot gets exactly one', () => {
  const ds = plan(snapshot([chroot('zed'), chroot('root'), chroot('amy', { lastUsed: NOW })]), policy)
  assert.equal(
    ds.map((d) => [d.path.split('/').pop(), d.action]),
    [['amy', 'keep'], ['root', 'keep'], ['zed', 'remove']],
  )
})

test.run()

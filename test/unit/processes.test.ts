// usersOfChroots on synthetic scans (path boundaries, identity matches, several chroots) and
// scanProcesses on a fake /proc behind the Io seam (vanished pids, EACCES, kernel threads).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import type * as fs from 'node:fs'
import { scanProcesses, usersOfChroots, type ChrootIdentity, type ProcessInfo } from '../../src/processes.js'
import { systemIo, withIo } from '../../src/io.js'

const G = '/var/lib/archbuild/extra-x86_64'
const chroots: ChrootIdentity[] = [
  { path: `${G}/root`, dev: 40, ino: 256 },
  { path: `${G}/user`, dev: 41, ino: 256 },
  { path: `${G}/user2`, dev: 42, ino: 256 },
]
const proc = (pid: number, rest: Partial<ProcessInfo> = {}): ProcessInfo => ({ pid, command: `p${pid}`, ...rest })
const hostRoot = { dev: 1, ino: 2, path: '/' }
const scan = (...processes: ProcessInfo[]) => ({ processes, unreadable: [] })

test('every chroot gets an entry, empty when nobody uses it', () => {
  const users = usersOfChroots(scan(proc(1, { root: hostRoot, cwd: '/', exe: '/usr/lib/systemd/systemd' })), chroots)
  assert.equal([...users.keys()], chroots.map((c) => c.path))
  for (const list of users.values()) assert.equal(list, [])
})

test('paths are compared on / boundaries: user2 is not inside user, userX is neither', () => {
  const users = usersOfChroots(
    scan(
      proc(10, { root: hostRoot, cwd: `${G}/user2/build`, exe: '/usr/bin/make' }),
      proc(11, { root: hostRoot, cwd: `${G}/userX`, exe: `${G}/use` }),
      proc(12, { root: hostRoot, cwd: G, exe: '/usr/bin/bash' }),
    ),
    chroots,
  )
  assert.equal(users.get(`${G}/user`), [])
  assert.equal(users.get(`${G}/user2`), [{ pid: 10, command: 'p10', how: 'cwd' }])
  assert.equal(users.get(`${G}/root`), [])
})

test('a chroot path itself counts (at, not only below)', () => {
  const users = usersOfChroots(scan(proc(20, { root: hostRoot, cwd: `${G}/user` })), chroots)
  assert.equal(users.get(`${G}/user`), [{ pid: 20, command: 'p20', how: 'cwd' }])
})

test('root by dev+ino although readlink shows a path from another mount namespace', () => {
  const users = usersOfChroots(
    scan(proc(30, { root: { dev: 41, ino: 256, path: '/mnt/elsewhere' }, cwd: '/mnt/elsewhere/build', exe: '/mnt/elsewhere/bin/sh' })),
    chroots,
  )
  assert.equal(users.get(`${G}/user`), [{ pid: 30, command: 'p30', how: 'root' }])
  assert.equal(users.get(`${G}/user2`), [])
})

test('root by dev+ino after a lazy unmount, where readlink says /', () => {
  const users = usersOfChroots(scan(proc(31, { root: { dev: 42, ino: 256, path: '/' }, cwd: '/', exe: '/usr/bin/sleep' })), chroots)
  assert.equal(users.get(`${G}/user2`), [{ pid: 31, command: 'p31', how: 'root' }])
})

test('the same inode number on another device is not a match (btrfs: every subvolume is ino 256)', () => {
  const users = usersOfChroots(scan(proc(32, { root: { dev: 99, ino: 256, path: '/' } })), chroots)
  for (const list of users.values()) assert.equal(list, [])
})

test('root by path when chrooted into a subdirectory of a chroot', () => {
  const users = usersOfChroots(scan(proc(33, { root: { dev: 41, ino: 9000, path: `${G}/user/sub` } })), chroots)
  assert.equal(users.get(`${G}/user`), [{ pid: 33, command: 'p33', how: 'root' }])
})

test('one entry per (pid, chroot), the first how in the order root, cwd, exe', () => {
  const users = usersOfChroots(
    scan(
      proc(40, { root: { dev: 40, ino: 256, path: `${G}/root` }, cwd: `${G}/root/build`, exe: `${G}/root/usr/bin/sh` }),
      proc(41, { root: hostRoot, cwd: `${G}/user/x`, exe: `${G}/user/usr/bin/sh` }),
      proc(42, { root: hostRoot, cwd: '/home/a', exe: `${G}/user/usr/bin/sh` }),
    ),
    chroots,
  )
  assert.equal(users.get(`${G}/root`), [{ pid: 40, command: 'p40', how: 'root' }])
  assert.equal(users.get(`${G}/user`), [
    { pid: 41, command: 'p41', how: 'cwd' },
    { pid: 42, command: 'p42', how: 'exe' },
  ])
})

test('one process can use several chroots (root in one, cwd in another, exe in a third)', () => {
  const users = usersOfChroots(
    scan(proc(50, { root: { dev: 40, ino: 256, path: `${G}/root` }, cwd: `${G}/user/build`, exe: `${G}/user2/bin/x` })),
    chroots,
  )
  assert.equal(users.get(`${G}/root`), [{ pid: 50, command: 'p50', how: 'root' }])
  assert.equal(users.get(`${G}/user`), [{ pid: 50, command: 'p50', how: 'cwd' }])
  assert.equal(users.get(`${G}/user2`), [{ pid: 50, command: 'p50', how: 'exe' }])
})

test('a chroot at / (never a real case) and odd kernel paths do not crash', () => {
  const users = usersOfChroots(
    scan(proc(60, { root: { dev: 5, ino: 5, path: '(unreachable)/x' }, cwd: '/a', exe: 'anon_inode:[x]' })),
    [{ path: '/', dev: 1, ino: 1 }],
  )
  assert.equal(users.get('/'), [{ pid: 60, command: 'p60', how: 'cwd' }])
})

test('2,000 processes and 100 chroots: well under 100 ms', () => {
  const many: ChrootIdentity[] = Array.from({ length: 100 }, (_, i) => ({ path: `${G}/copy${i}`, dev: 100 + i, ino: 256 }))
  const processes = Array.from({ length: 2000 }, (_, i) =>
    proc(1000 + i, {
      root: i % 50 === 0 ? { dev: 100 + (i % 100), ino: 256, path: '/' } : hostRoot,
      cwd: `${G}/copy${i % 150}/build/src/deep/er/still`,
      exe: `/usr/lib/very/long/path/to/bin${i}`,
    }),
  )
  const started = performance.now()
  const users = usersOfChroots({ processes, unreadable: [] }, many)
  const took = performance.now() - started
  assert.ok(took < 100, `took ${took} ms`)
  // copy0: cwd when i % 150 === 0 (14 processes), root when i % 100 === 0 (20), both when i % 300 === 0 (7)
  assert.is(users.get(`${G}/copy0`)!.length, 27)
  assert.is(users.get(`${G}/copy0`)![0]!.how, 'root') // pid 1000: root dev 100 and cwd in copy0
})

/** A fake /proc: pids → files and links; anything missing is ENOENT. */
function fakeProc(entries: Record<string, string | Error>, stats: Record<string, { dev: number; ino: number } | Error>) {
  const pids = new Set(Object.keys(entries).map((k) => k.split('/')[2]!))
  const enoent = (p: string) => Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT', syscall: 'readlink', path: p })
  const get = (p: string): string => {
    const v = entries[p]
    if (v === undefined) throw enoent(p)
    if (v instanceof Error) throw v
    return v
  }
  return withIo(systemIo, {
    readdir: (p) => (p === '/proc' ? ['self', 'thread-self', 'sys', ...pids] : []),
    readFile: get,
    readlink: get,
    stat: (p) => {
      const v = stats[p]
      if (v === undefined) throw enoent(p)
      if (v instanceof Error) throw v
      return v as unknown as fs.Stats
    },
  })
}
const sysErr = (code: string, syscall: string, path: string) => Object.assign(new Error(code), { code, syscall, path })

test('scanProcesses: full entries, kernel threads without exe, vanished pids dropped, EACCES reported', () => {
  const io = fakeProc(
    {
      '/proc/1/comm': 'systemd\n',
      '/proc/1/root': '/',
      '/proc/1/cwd': '/',
      '/proc/1/exe': '/usr/lib/systemd/systemd',
      '/proc/2/comm': 'kthreadd\n',
      '/proc/2/root': '/',
      '/proc/2/cwd': '/',
      '/proc/77/comm': sysErr('ESRCH', 'open', '/proc/77/comm'), // exited before we looked
      '/proc/78/comm': 'bash\n',
      '/proc/78/root': '/',
      '/proc/78/cwd': sysErr('EACCES', 'readlink', '/proc/78/cwd'),
      '/proc/78/exe': '/usr/bin/bash (deleted)',
    },
    { '/proc/1/root': { dev: 1, ino: 2 }, '/proc/2/root': { dev: 1, ino: 2 }, '/proc/78/root': { dev: 1, ino: 2 } },
  )
  const result = scanProcesses(io)
  assert.equal(result.processes, [
    { pid: 1, command: 'systemd', root: { dev: 1, ino: 2, path: '/' }, cwd: '/', exe: '/usr/lib/systemd/systemd' },
    { pid: 2, command: 'kthreadd', root: { dev: 1, ino: 2, path: '/' }, cwd: '/' },
    { pid: 78, command: 'bash', root: { dev: 1, ino: 2, path: '/' }, exe: '/usr/bin/bash' },
  ])
  assert.equal(result.unreadable, [{ pid: 78, what: 'cwd', reason: "readlink '/proc/78/cwd': EACCES" }])
})

test('scanProcesses: our own pid and excludePids are skipped', () => {
  const entries: Record<string, string> = {}
  for (const pid of [process.pid, 5, 6]) entries[`/proc/${pid}/comm`] = 'x\n'
  const result = scanProcesses(fakeProc(entries, {}), { excludePids: [6] })
  assert.equal(result.processes.map((p) => p.pid), [5])
})

test('scanProcesses: /proc that cannot be listed is an ESYS error, never an empty scan', () => {
  const io = withIo(systemIo, { readdir: () => { throw sysErr('EACCES', 'scandir', '/proc') } })
  try {
    scanProcesses(io)
    assert.unreachable('expected ESYS')
  } catch (err) {
    assert.is((err as { code?: string }).code, 'ESYS')
    assert.match((err as Error).message, "scandir '/proc': EACCES")
  }
})

test('scanProcesses on the real /proc: finds pid 1-ish processes, never ourselves, never throws', () => {
  const result = scanProcesses(systemIo)
  assert.ok(result.processes.length > 0)
  assert.not.ok(result.processes.some((p) => p.pid === process.pid))
  const parent = result.processes.find((p) => p.pid === process.ppid)
  assert.ok(parent?.root, 'our parent process has a readable root')
})

test.run()

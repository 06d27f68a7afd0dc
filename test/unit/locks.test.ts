/**
 * parseLocks on captured /proc/locks text, decodeDev against glibc's makedev, and
 * findLockHolders against an in-memory /proc (faults injected through the Io seam).
 * The real kernel is exercised in test/root/locks.test.ts.
 */
import type * as fs from 'node:fs'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CleanerError } from '../../src/errors.js'
import { systemIo, withIo, type Io } from '../../src/io.js'
import { decodeDev, findLockHolders, parseLocks, type LockEntry } from '../../src/locks.js'

// Captured on this kernel (6.x): OFD pid -1, a blocked flock waiter, then hand-made lines
// in the kernel's format for leases, deep waiters and the no-inode forms.
const CAPTURED = `1: OFDLCK ADVISORY  WRITE -1 fe:00:2146530 0 EOF
2: POSIX  ADVISORY  WRITE 3978 fe:00:2146529 0 EOF
3: FLOCK  ADVISORY  WRITE 3977 fe:00:2146528 0 EOF
3: -> FLOCK  ADVISORY  WRITE 4072 fe:00:2146528 0 EOF
4: POSIX  ADVISORY  READ 812 00:2a:17 100 199
4:  -> POSIX  ADVISORY  WRITE 813 00:2a:17 0 EOF
5: LEASE  ACTIVE    READ 901 103:03:1234567 0 EOF
6: DELEG  BREAKING  READ 902 08:01:99 0 EOF
7: FLOCK  MANDATORY  WRITE 0 fd:01:7 0 EOF
8: LEASE  BREAKER   UNLCK 903 <none>:0 0 EOF
`

function parseError(text: string): CleanerError {
  try {
    parseLocks(text)
  } catch (err) {
    assert.instance(err, CleanerError)
    return err as CleanerError
  }
  throw new Error(`expected EPARSE for ${JSON.stringify(text)}`)
}

test('FLOCK, POSIX and OFDLCK lines: hex major:minor, decimal inode, offsets kept', () => {
  const [ofd, posix, flock] = parseLocks(CAPTURED)
  assert.equal(ofd, {
    ordinal: 1,
    kind: 'OFDLCK',
    mode: 'ADVISORY',
    access: 'WRITE',
    pid: -1,
    major: 254,
    minor: 0,
    inode: 2146530,
    start: '0',
    end: 'EOF',
    blocked: false,
  })
  assert.equal([posix!.kind, posix!.pid, posix!.major, posix!.minor, posix!.inode], ['POSIX', 3978, 254, 0, 2146529])
  assert.equal([flock!.kind, flock!.pid, flock!.blocked], ['FLOCK', 3977, false])
})

test('`->` waiter lines are blocked, at any nesting depth, and keep their ordinal', () => {
  const entries = parseLocks(CAPTURED)
  assert.equal(
    entries.filter((e) => e.blocked).map((e) => [e.ordinal, e.pid, e.access]),
    [
      [3, 4072, 'WRITE'],
      [4, 813, 'WRITE'],
    ],
  )
  const ranged = entries[4]!
  assert.equal([ranged.major, ranged.minor, ranged.inode, ranged.start, ranged.end], [0, 42, 17, '100', '199'])
})

test('leases, delegations, mandatory locks, pid 0 and the no-inode form', () => {
  const entries = parseLocks(CAPTURED)
  const pick = (e: LockEntry) => [e.kind, e.mode, e.access, e.pid, e.major, e.minor, e.inode]
  assert.equal(pick(entries[6]!), ['LEASE', 'ACTIVE', 'READ', 901, 0x103, 3, 1234567])
  assert.equal(pick(entries[7]!), ['DELEG', 'BREAKING', 'READ', 902, 8, 1, 99])
  assert.equal(pick(entries[8]!), ['FLOCK', 'MANDATORY', 'WRITE', 0, 0xfd, 1, 7])
  assert.equal(pick(entries[9]!), ['LEASE', 'BREAKER', 'UNLCK', 903, -1, -1, -1])
})

test('empty text is no locks; a trailing newline is not a line', () => {
  assert.equal(parseLocks(''), [])
  assert.is(parseLocks(CAPTURED.trimEnd()).length, 10)
})

test('malformed lines are EPARSE naming the line number', () => {
  const cases: Array<[string, RegExp]> = [
    ['FLOCK  ADVISORY  WRITE 1 fe:00:2 0 EOF', /line 2: expected "N:"/],
    ['x: FLOCK  ADVISORY  WRITE 1 fe:00:2 0 EOF', /line 2: expected "N:"/],
    ['2: FLOCK  ADVISORY  WRITE 1 fe:00:2 0', /line 2: expected 7 fields after the ordinal, got 6/],
    ['2: FLOCK  ADVISORY  WRITE 1 fe:00:2 0 EOF extra', /line 2: expected 7 fields/],
    ['2: flock  ADVISORY  WRITE 1 fe:00:2 0 EOF', /line 2: expected KIND MODE ACCESS/],
    ['2: FLOCK  ADVISORY  WRITE pid fe:00:2 0 EOF', /line 2: expected a pid/],
    ['2: FLOCK  ADVISORY  WRITE 1 fe:00 0 EOF', /line 2: expected MAJ:MIN:INODE/],
    ['2: FLOCK  ADVISORY  WRITE 1 fe:00:0x2 0 EOF', /line 2: expected MAJ:MIN:INODE/],
    ['2: FLOCK  ADVISORY  WRITE 1 fe:00:2 0 END', /line 2: expected START and END/],
    ['2: -> ', /line 2: expected 7 fields/],
    ['', /line 2: expected "N:"/],
  ]
  for (const [bad, message] of cases) {
    const err = parseError(`1: FLOCK  ADVISORY  WRITE 1 fe:00:1 0 EOF\n${bad}\n3: FLOCK  ADVISORY  WRITE 1 fe:00:3 0 EOF\n`)
    assert.is(err.code, 'EPARSE')
    assert.match(err.message, message)
    assert.match(err.message, '/proc/locks line 2')
  }
})

test('decodeDev: glibc major()/minor() of makedev() values (from python3 os.makedev)', () => {
  const known: Array<[number, number, number]> = [
    [66307, 259, 3], // nvme0n1p3
    [2049, 8, 1], // sda1
    [39, 0, 39], // an anonymous device (tmpfs, btrfs)
    [1048620, 0, 300], // minor > 255 spills above bit 20
    [4294967295, 4095, 1048575], // the largest 32-bit encoding
    [17592186044421, 4096, 5], // major > 4095 spills above bit 32
    [263883060150016, 65535, 65536],
  ]
  for (const [dev, major, minor] of known) assert.equal(decodeDev(dev), { major, minor }, `dev ${dev}`)
  assert.throws(() => decodeDev(-1), RangeError)
  assert.throws(() => decodeDev(1.5), RangeError)
})

// ── findLockHolders on an in-memory /proc ────────────────────────────────────────────

interface FakeProcess {
  comm: string
  /** fd → [link text, fdinfo text, identity seen through stat] */
  fds?: Record<string, [string, string, { dev: number; ino: number }?]>
}

function vanished(path: string, syscall: string): Error {
  return Object.assign(new Error(`ENOENT: ${syscall} '${path}'`), { code: 'ENOENT', syscall, path })
}

/** A /proc with the given processes; everything else is ENOENT. */
function fakeProc(procs: Record<number, FakeProcess>, calls: string[] = []): Io {
  const proc = (p: string) => {
    const m = /^\/proc\/(\d+)\/(comm|fd|fdinfo)(?:\/(\d+))?$/.exec(p)
    return m ? { pid: Number(m[1]), what: m[2]!, fd: m[3], p: procs[Number(m[1])] } : undefined
  }
  return withIo(systemIo, {
    readFile(p) {
      calls.push(`readFile ${p}`)
      const r = proc(p)
      if (r?.p && r.what === 'comm') return r.p.comm + '\n'
      if (r?.p && r.what === 'fdinfo' && r.fd && r.p.fds?.[r.fd]) return r.p.fds[r.fd]![1]
      throw vanished(p, 'open')
    },
    readdir(p) {
      calls.push(`readdir ${p}`)
      if (p === '/proc') return ['self', 'sys', ...Object.keys(procs)]
      const r = proc(p)
      if (r?.p && r.what === 'fd' && !r.fd) return Object.keys(r.p.fds ?? {})
      throw vanished(p, 'scandir')
    },
    readlink(p) {
      calls.push(`readlink ${p}`)
      const r = proc(p)
      if (r?.p && r.what === 'fd' && r.fd && r.p.fds?.[r.fd]) return r.p.fds[r.fd]![0]
      throw vanished(p, 'readlink')
    },
    stat(p) {
      calls.push(`stat ${p}`)
      const r = proc(p)
      const id = r?.p && r.what === 'fd' && r.fd ? r.p.fds?.[r.fd]?.[2] : undefined
      if (id) return id as unknown as fs.Stats
      throw vanished(p, 'stat')
    },
  })
}

const LOCK = '/var/lib/archbuild/extra-x86_64/user.lock'
// ext4 on 254:0 (st_dev 65024); a btrfs mount on 0:39 whose subvolumes are 0:41 and 0:42
const EXT4 = { path: LOCK, dev: 65024, ino: 2146528, btrfs: false } as const
const lockLine = (kind: string, pid: number, dev: string, ino: number) =>
  `1: ${kind}  ADVISORY  WRITE ${pid} ${dev}:${ino} 0 EOF`
const fdinfo = (...locks: string[]) => `pos:\t0\nflags:\t0100000\nmnt_id:\t27\nino:\t257\n${locks.map((l) => `lock:\t${l}\n`).join('')}`

test('holders by (major, minor, inode): the live pid with its command; waiters and other files are not', () => {
  const entries = parseLocks(
    [
      '3: FLOCK  ADVISORY  WRITE 3977 fe:00:2146528 0 EOF',
      '3: -> FLOCK  ADVISORY  WRITE 4072 fe:00:2146528 0 EOF',
      '4: FLOCK  ADVISORY  WRITE 4100 fe:00:2146529 0 EOF', // another inode
      '5: FLOCK  ADVISORY  WRITE 4101 fe:01:2146528 0 EOF', // another device
      '6: POSIX  ADVISORY  WRITE 3977 fe:00:2146528 0 99', // the same pid, POSIX too
      '7: POSIX  ADVISORY  WRITE 3977 fe:00:2146528 100 EOF', // ... twice: one holder
    ].join('\n'),
  )
  const io = fakeProc({ 3977: { comm: 'makechrootpkg' }, 4072: { comm: 'flock' }, 4100: { comm: 'x' }, 4101: { comm: 'y' } })
  assert.equal(findLockHolders(io, entries, EXT4), [
    { pid: 3977, command: 'makechrootpkg', kind: 'FLOCK', pidGone: false },
    { pid: 3977, command: 'makechrootpkg', kind: 'POSIX', pidGone: false },
  ])
  assert.equal(findLockHolders(io, entries, { ...EXT4, ino: 1 }), [])
})

test('a listed pid that is gone still holds (an heir kept the descriptor)', () => {
  const entries = parseLocks('1: FLOCK  ADVISORY  WRITE 5000 fe:00:2146528 0 EOF')
  assert.equal(findLockHolders(fakeProc({}), entries, EXT4), [{ pid: 5000, command: '?', kind: 'FLOCK', pidGone: true }])
})

test('OFD lock with pid -1: the holder is found through fdinfo lock lines', () => {
  const entries = parseLocks('1: OFDLCK ADVISORY  WRITE -1 fe:00:2146528 0 EOF')
  const io = fakeProc({
    700: { comm: 'bash', fds: { '3': [LOCK, fdinfo()] } }, // open, no lock
    701: { comm: 'python3', fds: { '0': ['/dev/null', fdinfo()], '5': [LOCK, fdinfo(lockLine('OFDLCK', -1, 'fe:00', 2146528))] } },
  })
  assert.equal(findLockHolders(io, entries, EXT4), [{ pid: 701, command: 'python3', kind: 'OFDLCK', pidGone: false }])
  // nobody found (owner in another pid namespace): still held, anonymously
  assert.equal(findLockHolders(fakeProc({}), entries, EXT4), [{ pid: -1, command: '?', kind: 'OFDLCK', pidGone: true }])
})

const BTRFS_A = { path: '/b/a/user.lock', dev: 41, ino: 257, fsDev: { major: 0, minor: 39 }, btrfs: true } as const
const BTRFS_B = { path: '/b/b/user.lock', dev: 42, ino: 257, fsDev: { major: 0, minor: 39 }, btrfs: true } as const
const ON_FS = parseLocks('1: FLOCK  ADVISORY  WRITE 800 00:27:257 0 EOF')

test('btrfs: the filesystem device and a repeated inode are confirmed by the holder\'s descriptor', () => {
  const io = fakeProc({ 800: { comm: 'flock', fds: { '3': ['/b/a/user.lock', fdinfo(lockLine('FLOCK', 800, '00:27', 257))] } } })
  assert.equal(findLockHolders(io, ON_FS, BTRFS_A), [{ pid: 800, command: 'flock', kind: 'FLOCK', pidGone: false }])
  assert.equal(findLockHolders(io, ON_FS, BTRFS_B), [])
  // without btrfs: true the filesystem device is not taken for the file's
  assert.equal(findLockHolders(io, ON_FS, { ...BTRFS_A, btrfs: false }), [])
})

test('btrfs: an open descriptor without a lock: line does not confirm', () => {
  const io = fakeProc({ 800: { comm: 'flock', fds: { '3': ['/b/a/user.lock', fdinfo()] } } })
  assert.equal(findLockHolders(io, ON_FS, BTRFS_A), [])
})

test('btrfs: a gone pid still holds', () => {
  assert.equal(findLockHolders(fakeProc({}), ON_FS, BTRFS_A), [{ pid: 800, command: '?', kind: 'FLOCK', pidGone: true }])
})

test('btrfs: a reused pid without the descriptor; the heir that holds the lock is found', () => {
  const io = fakeProc({
    800: { comm: 'unrelated', fds: { '0': ['/dev/null', fdinfo()] } },
    801: { comm: 'sleep', fds: { '9': ['/b/a/user.lock', fdinfo(lockLine('FLOCK', 800, '00:27', 257))] } },
  })
  assert.equal(findLockHolders(io, ON_FS, BTRFS_A), [{ pid: 801, command: 'sleep', kind: 'FLOCK', pidGone: false }])
  assert.equal(findLockHolders(io, ON_FS, BTRFS_B), [])
})

test('btrfs: a holder in another mount namespace is recognised by name and identity through stat', () => {
  const seen = { dev: 41, ino: 257 }
  const io = fakeProc({ 800: { comm: 'flock', fds: { '3': ['/build/user.lock', fdinfo(lockLine('FLOCK', 800, '00:27', 257)), seen] } } })
  assert.equal(findLockHolders(io, ON_FS, BTRFS_A).length, 1)
  assert.equal(findLockHolders(io, ON_FS, BTRFS_B), []) // same name, other identity
})

test('entries that vanish mid-read are tolerated; other errors are ESYS with path and syscall', () => {
  const base = fakeProc({ 800: { comm: 'flock', fds: { '3': ['/b/a/user.lock', fdinfo(lockLine('FLOCK', 800, '00:27', 257))] } } })
  // the descriptor closes between readdir and readlink: not confirmed, the pid is alive
  const closing = withIo(base, { readlink: (p) => { throw vanished(p, 'readlink') } })
  assert.equal(findLockHolders(closing, ON_FS, BTRFS_A), [])
  // the process exits between comm and fd: gone, still held
  const exiting = withIo(base, { readdir: (p) => { if (p === '/proc') return []; throw vanished(p, 'scandir') } })
  assert.equal(findLockHolders(exiting, ON_FS, BTRFS_A), [{ pid: 800, command: '?', kind: 'FLOCK', pidGone: true }])
  const failing = withIo(base, {
    readdir: (p) => {
      throw Object.assign(new Error('EIO'), { code: 'EIO', syscall: 'scandir', path: p })
    },
  })
  try {
    findLockHolders(failing, ON_FS, BTRFS_A)
    assert.unreachable()
  } catch (err) {
    assert.instance(err, CleanerError)
    const e = err as CleanerError
    assert.equal([e.code, e.path, e.syscall], ['ESYS', '/proc/800/fd', 'scandir'])
    assert.match(e.message, "scandir '/proc/800/fd': EIO")
  }
})

const denied = (p: string) => Object.assign(new Error('EACCES'), { code: 'EACCES', syscall: 'readlink', path: p })

test('btrfs: descriptors we may not read (EACCES): a listed pid holds; the search passes others by', () => {
  const base = fakeProc({
    800: { comm: 'flock', fds: { '3': ['/b/a/user.lock', fdinfo(lockLine('FLOCK', 800, '00:27', 257))] } },
    1: { comm: 'init', fds: { '0': ['/dev/null', fdinfo()] } },
  })
  const listedDenied = withIo(base, { readlink: (p) => { throw denied(p) } })
  assert.equal(findLockHolders(listedDenied, ON_FS, BTRFS_B), [{ pid: 800, command: 'flock', kind: 'FLOCK', pidGone: false }])
  // pid 800 holds the twin; pid 1 cannot be read: the search for another holder of B skips it
  const initDenied = withIo(base, {
    readlink: (p) => {
      if (p.startsWith('/proc/1/')) throw denied(p)
      return base.readlink(p)
    },
  })
  assert.equal(findLockHolders(initDenied, ON_FS, BTRFS_B), [])
  assert.equal(findLockHolders(initDenied, ON_FS, BTRFS_A), [{ pid: 800, command: 'flock', kind: 'FLOCK', pidGone: false }])
  // an anonymous OFD owner not found among the readable: still held
  const ofd = parseLocks('1: OFDLCK ADVISORY  WRITE -1 00:27:257 0 EOF')
  assert.equal(findLockHolders(initDenied, ofd, BTRFS_B), [{ pid: -1, command: '?', kind: 'OFDLCK', pidGone: true }])
})

test('a malformed fdinfo lock line is EPARSE naming the file and line', () => {
  const io = fakeProc({ 800: { comm: 'flock', fds: { '3': ['/b/a/user.lock', 'pos:\t0\nlock:\tgarbage\n'] } } })
  try {
    findLockHolders(io, ON_FS, BTRFS_A)
    assert.unreachable()
  } catch (err) {
    assert.instance(err, CleanerError)
    assert.is((err as CleanerError).code, 'EPARSE')
    assert.match((err as CleanerError).message, '/proc/800/fdinfo/3 line 2')
  }
})

test('no candidate, no /proc reads at all', () => {
  const calls: string[] = []
  const entries = parseLocks(CAPTURED)
  assert.equal(findLockHolders(fakeProc({}, calls), entries, { ...EXT4, ino: 42 }), [])
  assert.equal(calls, [])
})

test.run()

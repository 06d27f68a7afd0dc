/**
 * killChrootUsers against real processes in a busybox chroot on a scratch tmpfs: chrooted, cwd
 * inside, lock holders (one whose `flock` parent is dead, so /proc/locks shows a stale pid),
 * bystanders that must live; a process that ignores SIGTERM; a daemon that forks orphans while
 * it is killed (mock's orphanskill case). Then, behind a fake /proc: pid reuse between scan and
 * signal, pid 1 and our parent, EPERM, and a /proc/locks pid that no descriptor proves.
 * Every helper runs in its own session (setsid) and is killed by session id afterwards.
 */
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CleanerError } from '../../src/errors.js'
import { systemIo, withIo, type Io } from '../../src/io.js'
import { killChrootUsers, parseProcStat, type KillTarget } from '../../src/kill-users.js'
import { parseLocks } from '../../src/locks.js'
import { recordingLogger, silentLogger } from '../../src/logger.js'
import { scanProcesses, usersOfChroots } from '../../src/processes.js'
import { assertRootSandbox, scratchTmpfs } from '../helpers/sys.js'
import { alive, Sessions, untilReadable } from '../helpers/build-root.js'

assertRootSandbox()

const exeOf = (pid: number) => fs.readlinkSync(`/proc/${pid}/exe`)

/** A busybox-static chroot at `dir` (mkdir -p C/bin, busybox, sh and sleep links). */
function makeChroot(dir: string): void {
  fs.mkdirSync(`${dir}/bin`, { recursive: true })
  fs.mkdirSync(`${dir}/build`)
  fs.copyFileSync('/bin/busybox', `${dir}/bin/busybox`)
  fs.chmodSync(`${dir}/bin/busybox`, 0o755)
  fs.symlinkSync('busybox', `${dir}/bin/sh`)
  fs.symlinkSync('busybox', `${dir}/bin/sleep`)
}

function targetOf(chroot: string, lock?: string): KillTarget {
  const st = fs.statSync(chroot)
  const lk = lock === undefined ? undefined : fs.lstatSync(lock)
  return {
    path: chroot,
    dev: st.dev,
    ino: st.ino,
    ...(lock && lk ? { lockFile: { path: lock, dev: lk.dev, ino: lk.ino } } : {}),
    fsType: 'other',
  }
}

/** systemIo that records every signal sent. */
function recordingIo(): { io: Io; signals: Array<[number, string]> } {
  const signals: Array<[number, string]> = []
  const io = withIo(systemIo, {
    kill: (pid, sig) => {
      signals.push([pid, sig])
      systemIo.kill(pid, sig)
    },
  })
  return { io, signals }
}

function usersNow(chroot: KillTarget): number[] {
  return (usersOfChroots(scanProcesses(systemIo), [chroot]).get(chroot.path) ?? []).map((u) => u.pid)
}

const sorted = (pids: Iterable<number>) => [...pids].sort((a, b) => a - b)

test('chrooted, cwd inside and lock holders (even under a dead flock pid) are killed; bystanders live', async () => {
  const scratch = scratchTmpfs('bc-kill-')
  const s = new Sessions()
  try {
    const g = `${scratch.dir}/extra-x86_64`
    const C = `${g}/root`
    const lock = `${g}/root.lock`
    makeChroot(C)
    makeChroot(`${g}/root2`) // a sibling sharing the name as a prefix
    fs.mkdirSync(`${scratch.dir}/elsewhere`)
    fs.writeFileSync(lock, '')

    const chrooted = s.start('chroot', [C, '/bin/sleep', '600'])
    const inCwd = s.start('sleep', ['600'], { cwd: `${C}/build` })
    const flocker = s.start('flock', ['-s', lock, 'sleep', '600'])
    const orphanedFlock = s.start('flock', ['-s', lock, 'sleep', '600'])
    const outside = s.start('sleep', ['600'], { cwd: `${scratch.dir}/elsewhere` })
    const sibling = s.start('chroot', [`${g}/root2`, '/bin/sleep', '600'])
    const openNoLock = s.start('sh', ['-c', `exec 3<'${lock}'; exec sleep 600`])
    await untilReadable('chrooted', () => exeOf(chrooted) === `${C}/bin/busybox`)
    await untilReadable('cwd', () => exeOf(inCwd).endsWith('/sleep'))
    await untilReadable('sibling', () => exeOf(sibling) === `${g}/root2/bin/busybox`)
    await untilReadable('open-no-lock', () => exeOf(openNoLock).endsWith('/sleep'))
    await untilReadable('flock children', () => s.members(flocker).length === 2 && s.members(orphanedFlock).length === 2)
    const flockChild = s.members(flocker).find((p) => p !== flocker)!
    const heir = s.members(orphanedFlock).find((p) => p !== orphanedFlock)!

    // Kill the second flock(1) only: its sleep keeps the lock, which /proc/locks lists under the dead pid.
    process.kill(orphanedFlock, 'SIGKILL')
    await untilReadable('the flock parent reaped', () => !fs.existsSync(`/proc/${orphanedFlock}`))
    const ino = fs.lstatSync(lock).ino
    const listed = parseLocks(fs.readFileSync('/proc/locks', 'utf8')).filter((e) => e.inode === ino).map((e) => e.pid)
    assert.ok(listed.includes(orphanedFlock), `precondition: /proc/locks lists the dead flock pid (${listed})`)

    const { io, signals } = recordingIo()
    const log = recordingLogger()
    const started = Date.now()
    const report = await killChrootUsers(io, targetOf(C, lock), { graceMs: 5000, log })
    const took = Date.now() - started

    const victims = [chrooted, inCwd, flocker, flockChild, heir]
    assert.equal(sorted(report.killed.map((v) => v.pid)), sorted(victims))
    assert.equal(report.survivors, [])
    const why = new Map(report.killed.map((v) => [v.pid, v.why]))
    assert.is(why.get(chrooted), 'root')
    assert.is(why.get(inCwd), 'cwd')
    for (const pid of [flocker, flockChild, heir]) assert.is(why.get(pid), 'lock holder', `pid ${pid}`)
    for (const v of report.killed) {
      assert.ok(log.lines.includes(`notice: killed pid ${v.pid} (${v.command}): ${v.why}, in ${C}`), `named: ${v.pid}`)
    }
    // They all obeyed SIGTERM: no SIGKILL, and no waiting out the whole grace.
    assert.equal(sorted(signals.map(([pid]) => pid)), sorted(victims))
    assert.ok(signals.every(([, sig]) => sig === 'SIGTERM'), JSON.stringify(signals))
    assert.ok(took < 4000, `took ${took} ms`)

    for (const pid of victims) assert.not.ok(alive(pid), `victim ${pid} is gone`)
    for (const pid of [outside, sibling, openNoLock]) assert.ok(alive(pid), `bystander ${pid} lives`)
    assert.is(spawnSync('flock', ['-n', '-E', '75', lock, 'true']).status, 0, 'the lock is free')
    assert.equal(usersNow(targetOf(C)), [])
  } finally {
    await s.stopAll()
    scratch.cleanup()
  }
})

test('a process that ignores SIGTERM is SIGKILLed once the grace has passed', async () => {
  const scratch = scratchTmpfs('bc-kill-')
  const s = new Sessions()
  try {
    const C = `${scratch.dir}/root`
    makeChroot(C)
    const stubborn = s.start('chroot', [C, '/bin/sh', '-c', "trap '' TERM; while :; do sleep 1; done"])
    await untilReadable('the loop', () => exeOf(stubborn) === `${C}/bin/busybox` && s.members(stubborn).length >= 2)

    const { io, signals } = recordingIo()
    const log = recordingLogger()
    const started = Date.now()
    const report = await killChrootUsers(io, targetOf(C), { graceMs: 300, log })
    const took = Date.now() - started

    assert.equal(report.survivors, [])
    assert.ok(report.killed.some((v) => v.pid === stubborn && v.why === 'root' && v.command === 'sh'))
    assert.equal(signals.filter(([pid]) => pid === stubborn).map(([, sig]) => sig), ['SIGTERM', 'SIGKILL'])
    assert.ok(took >= 300, `SIGKILL came after the grace (took ${took} ms)`)
    assert.not.ok(alive(stubborn))
    assert.equal(usersNow(targetOf(C)), [])
  } finally {
    await s.stopAll()
    scratch.cleanup()
  }
})

// Forks orphans (a subshell that backgrounds and exits) every second; on SIGTERM it forks two
// more and a new copy of itself. `wait` returns as soon as a trapped signal arrives. Bounded,
// so that a broken run cannot fork forever.
const DAEMON = `trap '(sleep 600 &); (sleep 600 &); (/bin/sh /bin/daemon &)' TERM
i=0
while [ $i -lt 300 ]; do i=$((i + 1)); (sleep 600 &); sleep 1 & wait $!; done
`

async function startDaemon(s: Sessions, C: string): Promise<number> {
  fs.writeFileSync(`${C}/bin/daemon`, DAEMON)
  // busybox sh gives background jobs /dev/null as stdin: without one, each `&` fails at once.
  fs.mkdirSync(`${C}/dev`)
  fs.writeFileSync(`${C}/dev/null`, '')
  const daemon = s.start('chroot', [C, '/bin/sh', '/bin/daemon'])
  await untilReadable('orphans', () => s.members(daemon).length >= 4)
  return daemon
}

test('a daemon that forks while being killed: later rounds find the new processes, none is left', async () => {
  const scratch = scratchTmpfs('bc-kill-')
  const s = new Sessions()
  try {
    const C = `${scratch.dir}/root`
    makeChroot(C)
    const daemon = await startDaemon(s, C)
    const before = new Set(usersNow(targetOf(C)))
    assert.ok(before.has(daemon))

    const { io, signals } = recordingIo()
    const log = recordingLogger()
    const report = await killChrootUsers(io, targetOf(C), { graceMs: 1000, log })

    assert.equal(report.survivors, [])
    assert.equal(usersNow(targetOf(C)), [], 'a fresh scan finds nobody in the chroot')
    const killed = new Set(report.killed.map((v) => v.pid))
    assert.ok(killed.has(daemon))
    // Those the first round's scan did not see (no SIGTERM) were forked during the kill; later
    // rounds found them and sent SIGKILL straight away.
    const termed = new Set(signals.filter(([, sig]) => sig === 'SIGTERM').map(([pid]) => pid))
    const later = [...killed].filter((pid) => !termed.has(pid))
    assert.ok(later.length >= 3, `processes forked during the kill were found and killed: ${later}`)
    for (const pid of later) {
      assert.not.ok(before.has(pid))
      assert.equal(signals.filter(([p]) => p === pid).map(([, sig]) => sig), ['SIGKILL'], `pid ${pid}`)
    }
    for (const v of report.killed) assert.ok(log.lines.includes(`notice: killed pid ${v.pid} (${v.command}): root, in ${C}`))
  } finally {
    await s.stopAll()
    scratch.cleanup()
  }
})

test('rounds are bounded: with maxRounds 1 the daemon\'s new children are reported as survivors', async () => {
  const scratch = scratchTmpfs('bc-kill-')
  const s = new Sessions()
  try {
    const C = `${scratch.dir}/root`
    makeChroot(C)
    const daemon = await startDaemon(s, C)
    const report = await killChrootUsers(systemIo, targetOf(C), { graceMs: 1000, log: silentLogger, maxRounds: 1 })

    assert.ok(report.killed.some((v) => v.pid === daemon))
    assert.ok(report.survivors.length >= 3, JSON.stringify(report.survivors))
    for (const v of report.survivors) {
      assert.is(v.reason, 'still there after 1 round of signals')
      assert.ok(alive(v.pid), `survivor ${v.pid} really lives`)
    }
    const users = new Set(usersNow(targetOf(C)))
    for (const v of report.survivors) assert.ok(users.has(v.pid), `survivor ${v.pid} still uses the chroot`)
  } finally {
    await s.stopAll()
    scratch.cleanup()
  }
})

test('a lock we hold ourselves (as chroot-lock takes it) is neither a victim nor a survivor', async () => {
  const scratch = scratchTmpfs('bc-kill-')
  const s = new Sessions()
  let fd: number | undefined
  try {
    const C = `${scratch.dir}/root`
    const lock = `${scratch.dir}/root.lock`
    makeChroot(C)
    fs.writeFileSync(lock, '')
    // Like chroot-lock.ts: flock(1) locks our descriptor as fd 3 and exits; /proc/locks lists its dead pid.
    fd = fs.openSync(lock, 'r')
    assert.is(spawnSync('flock', ['-n', '3'], { stdio: ['ignore', 'ignore', 'ignore', fd] }).status, 0)
    assert.is(spawnSync('flock', ['-n', '-E', '75', lock, 'true']).status, 75, 'precondition: the lock is held')
    const user = s.start('chroot', [C, '/bin/sleep', '600'])
    await untilReadable('chrooted', () => exeOf(user) === `${C}/bin/busybox`)

    const { io, signals } = recordingIo()
    const report = await killChrootUsers(io, targetOf(C, lock), { graceMs: 2000, log: silentLogger })
    assert.equal(signals, [[user, 'SIGTERM']])
    assert.equal(report.killed.map((v) => v.pid), [user])
    assert.equal(report.survivors, [])
    assert.is(spawnSync('flock', ['-n', '-E', '75', lock, 'true']).status, 75, 'we still hold it')
  } finally {
    if (fd !== undefined) fs.closeSync(fd)
    await s.stopAll()
    scratch.cleanup()
  }
})

// ---- a fake /proc behind the Io seam ----

interface FakeProc { comm: string; start: number; root: string; cwd: string; ppid?: number; fds?: Record<string, { dev: number; ino: number; lock: boolean }> }

const CHROOT = { path: '/var/lib/archbuild/extra-x86_64/root', dev: 40, ino: 256 }
const LOCK = { path: '/var/lib/archbuild/extra-x86_64/root.lock', dev: 2049, ino: 777 } // 8:1 in /proc/locks

function enoent(p: string): Error {
  return Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT', syscall: 'open', path: p })
}

/** A /proc with the given processes; `kill` records and (unless `onKill` says otherwise) ends them. */
function fakeProc(procs: Map<number, FakeProc>, extra: { locks?: () => string; onKill?: (pid: number) => void; onStat?: (pid: number) => void } = {}) {
  const signals: Array<[number, string]> = []
  const get = (p: string): [FakeProc, string] => {
    const m = /^\/proc\/(\d+)\/(.*)$/.exec(p)
    const proc = m && procs.get(Number(m[1]))
    if (!m || !proc) throw enoent(p)
    return [proc, m[2]!]
  }
  const idOf = (path: string) => (path === CHROOT.path ? { dev: CHROOT.dev, ino: CHROOT.ino } : { dev: 1, ino: 2 })
  const unused = () => {
    throw new Error('not used by killChrootUsers')
  }
  const io: Io = {
    readFile(p) {
      if (p === '/proc/locks') return extra.locks?.() ?? ''
      const [proc, what] = get(p)
      const pid = Number(p.split('/')[2])
      if (what === 'comm') return `${proc.comm}\n`
      if (what === 'stat') {
        const text = `${pid} (${proc.comm}) S ${proc.ppid ?? 1} ${pid} ${pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 ${proc.start} 1000 100 18446744073709551615\n`
        extra.onStat?.(pid)
        return text
      }
      const fd = /^fdinfo\/(\d+)$/.exec(what)
      if (fd && proc.fds?.[fd[1]!]) return `pos:\t0\nflags:\t0100000\nmnt_id:\t30\nino:\t777\n${proc.fds[fd[1]!]!.lock ? 'lock:\t1: FLOCK  ADVISORY  WRITE 99 08:01:777 0 EOF\n' : ''}`
      throw enoent(p)
    },
    readdir(p) {
      if (p === '/proc') return [...procs.keys()].map(String)
      const [proc, what] = get(p)
      if (what === 'fd') return Object.keys(proc.fds ?? {})
      throw enoent(p)
    },
    stat(p) {
      if (p === '/') return { dev: 1, ino: 2 } as fs.Stats
      const [proc, what] = get(p)
      if (what === 'root') return idOf(proc.root) as fs.Stats
      const fd = /^fd\/(\d+)$/.exec(what)
      if (fd && proc.fds?.[fd[1]!]) return proc.fds[fd[1]!] as unknown as fs.Stats
      throw enoent(p)
    },
    readlink(p) {
      const [proc, what] = get(p)
      if (what === 'root') return proc.root
      if (what === 'cwd') return proc.cwd
      if (what === 'exe') return '/usr/bin/true'
      if (/^fd\/\d+$/.test(what)) return LOCK.path
      throw enoent(p)
    },
    kill(pid, sig) {
      signals.push([pid, sig])
      if (!procs.has(pid)) throw Object.assign(new Error('kill ESRCH'), { code: 'ESRCH', syscall: 'kill' })
      if (extra.onKill) extra.onKill(pid)
      else procs.delete(pid)
    },
    lstat: unused,
    statfs: unused,
    open: unused,
    fstat: unused,
    close: unused,
    run: unused,
    unlink: unused,
    rmdir: unused,
  }
  return { io, signals }
}

const fast = { graceMs: 1000, log: silentLogger, sleep: async () => {} }
const target: KillTarget = { ...CHROOT, fsType: 'other' }

test('pid reuse: a pid recycled between scan and signal is not signalled; the unchanged one is', async () => {
  const procs = new Map<number, FakeProc>([
    [4242, { comm: 'sleep', start: 1000, root: CHROOT.path, cwd: '/' }],
    [4243, { comm: 'make', start: 1001, root: '/', cwd: `${CHROOT.path}/build` }],
  ])
  let statReads = 0
  const { io, signals } = fakeProc(procs, {
    // The first read of 4242's stat is the scan's; right after it, 4242 exits and its pid goes to sshd.
    onStat: (pid) => {
      if (pid === 4242 && ++statReads === 1) procs.set(4242, { comm: 'sshd', start: 5000, root: '/', cwd: '/' })
    },
  })
  const report = await killChrootUsers(io, target, fast)
  assert.equal(signals, [[4243, 'SIGTERM']])
  assert.equal(report.killed, [{ pid: 4243, command: 'make', why: 'cwd' }])
  assert.equal(report.survivors, [])
  assert.is(procs.get(4242)?.comm, 'sshd', 'the unrelated process lives')
})

test('pid 1 and our parent are never signalled: survivors with the reason', async () => {
  const procs = new Map<number, FakeProc>([
    [1, { comm: 'systemd', start: 1, root: '/', cwd: CHROOT.path }],
    [process.ppid, { comm: 'bash', start: 2, root: '/', cwd: `${CHROOT.path}/build` }],
  ])
  const { io, signals } = fakeProc(procs)
  const report = await killChrootUsers(io, target, fast)
  assert.equal(signals, [])
  assert.equal(report.killed, [])
  assert.equal(
    report.survivors.map((v) => [v.pid, v.reason]),
    [
      [1, 'pid 1 (init) is never signalled'],
      [process.ppid, 'an ancestor of build-cleaner (it runs us) is never signalled'],
    ],
  )
})

test('EPERM: reported as a survivor, no endless retry', async () => {
  const procs = new Map<number, FakeProc>([[4300, { comm: 'fuse', start: 9, root: CHROOT.path, cwd: '/' }]])
  const { io, signals } = fakeProc(procs, {
    onKill: () => {
      throw Object.assign(new Error('kill EPERM'), { code: 'EPERM', syscall: 'kill' })
    },
  })
  const report = await killChrootUsers(io, target, fast)
  assert.equal(signals, [[4300, 'SIGTERM']])
  assert.equal(report.survivors, [{ pid: 4300, command: 'fuse', why: 'root', reason: 'kill(4300, SIGTERM): EPERM (not permitted)' }])
})

test('lock: a descriptor with a lock line is a victim; a /proc/locks pid without one is not signalled', async () => {
  const procs = new Map<number, FakeProc>([
    [4400, { comm: 'sleep', start: 3, root: '/', cwd: '/', fds: { '3': { dev: LOCK.dev, ino: LOCK.ino, lock: true } } }],
    [4401, { comm: 'cat', start: 4, root: '/', cwd: '/', fds: { '3': { dev: LOCK.dev, ino: LOCK.ino, lock: false } } }],
    [4402, { comm: 'sshd', start: 5, root: '/', cwd: '/' }],
  ])
  // 4399 was flock(1) (dead; its child 4400 holds the lock); 4402 is a recycled pid listed for a lock it never had.
  // Once 4400 is gone, its lock is released: the first line goes.
  const locks = () =>
    (procs.has(4400) ? '1: FLOCK  ADVISORY  WRITE 4399 08:01:777 0 EOF\n' : '') + '2: FLOCK  ADVISORY  WRITE 4402 08:01:777 0 EOF\n'
  const { io, signals } = fakeProc(procs, { locks })
  const report = await killChrootUsers(io, { ...target, lockFile: LOCK }, { ...fast, maxRounds: 2 })
  assert.equal(signals, [[4400, 'SIGTERM']])
  assert.equal(report.killed, [{ pid: 4400, command: 'sleep', why: 'lock holder' }])
  assert.equal(report.survivors.map((v) => v.pid), [4402])
  assert.match(report.survivors[0]!.reason, /no descriptor of that file in it holds a lock/)
})

test('refuses a "chroot" that is our own root', async () => {
  const { io } = fakeProc(new Map())
  const err = await killChrootUsers(io, { path: '/srv/x', dev: 1, ino: 2, fsType: 'other' }, fast).catch((e: unknown) => e)
  assert.instance(err, CleanerError)
  assert.is((err as CleanerError).code, 'EREFUSED')
})

test('parseProcStat: a comm with spaces and parentheses; malformed text is EPARSE naming the file', () => {
  const st = parseProcStat('77 (a) (b c) Z 5 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 123456 0 0\n', '/proc/77/stat')
  assert.equal(st, { pid: 77, state: 'Z', ppid: 5, startTime: '123456' })
  for (const bad of ['', '77 sleep S 1', '77 (x) S 1 2 3', 'x (y) S 1 77 77 0 -1 0 0 0 0 0 0 0 0 20 0 1 0 5']) {
    const err = (() => {
      try {
        parseProcStat(bad, '/proc/77/stat')
      } catch (e) {
        return e
      }
      return undefined
    })()
    assert.instance(err, CleanerError, JSON.stringify(bad))
    assert.is((err as CleanerError).code, 'EPARSE')
    assert.match((err as CleanerError).message, '/proc/77/stat')
  }
})

test.run()

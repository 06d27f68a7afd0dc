// detachMountsBelow on real mounts, with a "host" built inside a scratch tmpfs: seed incident 1
// replayed (a chroot /run rbound from a shared host /run, user mounts propagating both ways),
// plus a control showing the naive `umount -R -l` really does tear down the host's mounts;
// over-mount stacks and nested trees in deepest-first order; a mount point whose parent is
// swapped for a symlink into the host after mountinfo was read; a failing umount; and the
// `/a/user` vs `/a/user2` boundary.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { assertRootSandbox, isMountPoint, listing, mountPointsBelow, scratchTmpfs, sh, type Scratch } from '../helpers/sys.js'
import { detachMountsBelow } from '../../src/unmount.js'
import { rejects } from '../helpers/assert.js'
import { mountHostRun } from '../helpers/fixture.js'
import { systemIo, withIo, type Io } from '../../src/io.js'
import { recordingLogger } from '../../src/logger.js'
import { readMountTable, type Mount } from '../../src/mountinfo.js'

assertRootSandbox()

let scratch: Scratch
test.before.each(() => {
  scratch = scratchTmpfs('bc-unmount-')
})
test.after.each(() => scratch.cleanup())

const mountAt = (p: string): Mount | undefined => readMountTable(systemIo).mountOf(p)
/** The topmost mount exactly at `p` (undefined when `p` is no mount point). */
const mountExactly = (p: string): Mount | undefined => {
  const m = mountAt(p)
  return m?.mountPoint === p ? m : undefined
}

/**
 * Seed incident 1: host-run (shared) with users' run dirs, rbound into chroot/run, so the
 * chroot's copies sit in the host's peer groups; then user 1002 logs in and their mount
 * propagates into the chroot.
 */
function buildIncident(): { hostRun: string; chroot: string } {
  const d = scratch.dir
  const hostRun = `${d}/host-run`
  const chroot = `${d}/archbuild/extra-x86_64/root`
  mountHostRun(hostRun)
  sh(`mkdir -p '${chroot}/run' '${chroot}/etc'
      echo 'Arch Linux' > '${chroot}/etc/os-release'
      mount --rbind '${hostRun}' '${chroot}/run'`)
  for (const u of ['1000', '1001']) {
    const host = mountExactly(`${hostRun}/user/${u}`)!
    const copy = mountExactly(`${chroot}/run/user/${u}`)!
    assert.ok(host.shared !== undefined && host.shared === copy.shared, `user ${u}: host and chroot copy are peers (shared:${host.shared})`)
  }
  assert.is(mountExactly(`${chroot}/run`)!.shared, mountExactly(hostRun)!.shared, 'chroot/run is a peer of host-run')
  // user 1002 logs in after the chroot was set up
  sh(`mkdir -p '${hostRun}/user/1002' && mount -t tmpfs user-1002 '${hostRun}/user/1002' && echo 'session of 1002' > '${hostRun}/user/1002/session'`)
  assert.ok(isMountPoint(`${chroot}/run/user/1002`), 'the new user mount propagated into the chroot')
  return { hostRun, chroot }
}

const USERS = ['1000', '1001', '1002']

test('control: a naive `umount -R -l chroot/run` also unmounts the host users\' run dirs', () => {
  const { hostRun, chroot } = buildIncident()
  sh(`umount -R -l '${chroot}/run'`)
  const lost = USERS.filter((u) => !isMountPoint(`${hostRun}/user/${u}`))
  assert.ok(lost.length > 0, 'the scenario is real: the host lost user mounts to propagation')
})

test('seed incident 1: everything below the chroot is detached, every host user mount survives', async () => {
  const { hostRun, chroot } = buildIncident()
  const hostBefore = listing(hostRun)
  const hostShared = mountExactly(hostRun)!.shared
  const chrootFiles = fs.readFileSync(`${chroot}/etc/os-release`, 'utf8')
  const log = recordingLogger()
  const { detached } = await detachMountsBelow(systemIo, chroot, { log })
  assert.equal(mountPointsBelow(chroot), [], 'nothing mounted below the chroot')
  assert.is(detached.length, 4, `run + 3 user dirs: ${detached.join(', ')}`)
  assert.is(detached[detached.length - 1], `${chroot}/run`, 'chroot/run last, after its children')
  for (const u of USERS) {
    assert.ok(isMountPoint(`${hostRun}/user/${u}`), `host user ${u} still mounted`)
    assert.is(fs.readFileSync(`${hostRun}/user/${u}/session`, 'utf8'), `session of ${u}\n`)
  }
  assert.is(listing(hostRun), hostBefore, 'host side unchanged')
  assert.is(mountExactly(hostRun)!.shared, hostShared, 'host-run still shared: only the chroot copies were made private')
  assert.is(fs.readFileSync(`${chroot}/etc/os-release`, 'utf8'), chrootFiles, 'chroot files intact')
  assert.equal(fs.readdirSync(`${chroot}/run`), [], 'chroot/run is an empty directory again')
})

test('nothing mounted below: nothing done', async () => {
  fs.mkdirSync(`${scratch.dir}/chroot`)
  const ran: string[] = []
  const io = withIo(systemIo, { run: async (file, args, o) => (ran.push(file), systemIo.run(file, args, o)) })
  assert.equal(await detachMountsBelow(io, `${scratch.dir}/chroot`), { detached: [] })
  assert.equal(ran, [])
})

test('over-mounts stacked on one mount point and a 3-deep tree: all detached, deepest first', async () => {
  const c = `${scratch.dir}/chroot`
  sh(`
    mkdir -p '${c}/tmp' '${c}/a'
    mount -t tmpfs under '${c}/tmp'; mount -t tmpfs middle '${c}/tmp'; mount -t tmpfs over '${c}/tmp'
    mount -t tmpfs a '${c}/a'; mkdir '${c}/a/b'; mount -t tmpfs b '${c}/a/b'; mkdir '${c}/a/b/c'; mount -t tmpfs c '${c}/a/b/c'
  `)
  const sources = new Map(readMountTable(systemIo).below(c).map((m) => [m.id, m.source]))
  assert.is(sources.size, 6)
  const log = recordingLogger()
  const { detached } = await detachMountsBelow(systemIo, c, { log })
  assert.equal(mountPointsBelow(c), [])
  assert.is(detached.length, 6)
  // The log names each mount id in the order unmounted: map them back to their sources.
  const order = log.lines
    .map((l) => /detached .* \(mount (\d+)\)/.exec(l)?.[1])
    .filter((id): id is string => id !== undefined)
    .map((id) => sources.get(Number(id)))
  assert.equal(order.filter((s) => ['over', 'middle', 'under'].includes(s!)), ['over', 'middle', 'under'], 'stack: top first')
  assert.equal(order.filter((s) => ['a', 'b', 'c'].includes(s!)), ['c', 'b', 'a'], 'tree: children first')
  assert.equal(detached.filter((p) => p.startsWith(`${c}/a`)), [`${c}/a/b/c`, `${c}/a/b`, `${c}/a`])
})

test('a shared mount covered by an over-mount cannot be made private: refused, nothing unmounted', async () => {
  const d = scratch.dir
  const c = `${d}/chroot`
  sh(`
    mkdir -p '${d}/host-tmp' '${c}/tmp'
    mount -t tmpfs host-tmp '${d}/host-tmp'; mount --make-shared '${d}/host-tmp'
    mount --bind '${d}/host-tmp' '${c}/tmp'
    mount -t tmpfs over '${c}/tmp'
  `)
  const before = mountPointsBelow(d)
  const err = await rejects(detachMountsBelow(systemIo, c), 'EUNMOUNT')
  assert.match(err.message, 'still shared')
  assert.match(err.message, 'nothing was unmounted')
  assert.equal(mountPointsBelow(d), before, 'every mount still there')
})

test('a parent dir swapped for a symlink into the host after mountinfo was read: no host mount is touched', async () => {
  const d = scratch.dir
  const c = `${d}/chroot`
  const host = `${d}/host`
  sh(`
    mkdir -p '${c}/var/run' '${host}/run'
    mount -t tmpfs host-run '${host}/run'; mount --make-shared '${host}/run'; echo socket > '${host}/run/dbus'
    mount -t tmpfs chroot-run '${c}/var/run'
  `)
  const hostMount = mountExactly(`${host}/run`)!
  const staleText = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  // The hostile build renames var away and leaves a symlink to the host in its place.
  sh(`mv '${c}/var' '${c}/var.moved' && ln -s '${host}' '${c}/var'`)
  assert.ok(fs.readFileSync(`${c}/var/run/dbus`, 'utf8'), 'the old mount point path now leads into the host')

  // (a) mountinfo is stale every time: the chroot mount cannot be reached, we give up.
  let reads = 0
  const alwaysStale: Io = withIo(systemIo, {
    readFile: (p) => (p === '/proc/self/mountinfo' ? (reads++, staleText) : systemIo.readFile(p)),
  })
  const err = await rejects(detachMountsBelow(alwaysStale, c), 'EUNMOUNT')
  assert.match(err.message, `${c}/var/run`)
  assert.ok(reads > 1, 'mountinfo was re-read before giving up')
  assert.ok(isMountPoint(`${host}/run`), 'host mount still mounted')
  assert.is(mountExactly(`${host}/run`)!.shared, hostMount.shared, 'host mount still shared (not made private)')
  assert.ok(isMountPoint(`${c}/var.moved/run`), 'the chroot mount is still there too')

  // (b) stale only for the first read: the re-read finds the mount where it now is.
  let first = true
  const staleOnce: Io = withIo(systemIo, {
    readFile: (p) => {
      if (p !== '/proc/self/mountinfo' || !first) return systemIo.readFile(p)
      first = false
      return staleText
    },
  })
  const { detached } = await detachMountsBelow(staleOnce, c)
  assert.equal(detached, [`${c}/var.moved/run`])
  assert.ok(isMountPoint(`${host}/run`), 'host mount still mounted')
  assert.is(fs.readFileSync(`${host}/run/dbus`, 'utf8'), 'socket\n')
  assert.is(mountExactly(`${host}/run`)!.shared, hostMount.shared)
  assert.equal(mountPointsBelow(c), [])
})

test('umount failing (exit 32): EUNMOUNT naming the mount point, exit code and stderr', async () => {
  const c = `${scratch.dir}/chroot`
  sh(`mkdir -p '${c}/proc' && mount -t tmpfs fakeproc '${c}/proc'`)
  const io = withIo(systemIo, {
    run: async (file, args, o) =>
      file === 'umount' ? { exitCode: 32, stdout: '', stderr: 'umount: target is busy.' } : systemIo.run(file, args, o),
  })
  const err = await rejects(detachMountsBelow(io, c), 'EUNMOUNT')
  assert.is(err.path, `${c}/proc`)
  assert.match(err.message, `${c}/proc`)
  assert.match(err.message, 'exit 32')
  assert.match(err.message, 'target is busy')
  assert.ok(isMountPoint(`${c}/proc`))
})

test('boundary: detaching <dir>/user leaves <dir>/user2 mounted', async () => {
  const d = scratch.dir
  sh(`mkdir -p '${d}/user/x' '${d}/user2' && mount -t tmpfs u '${d}/user/x' && mount -t tmpfs u2 '${d}/user2'`)
  const { detached } = await detachMountsBelow(systemIo, `${d}/user`)
  assert.equal(detached, [`${d}/user/x`])
  assert.ok(isMountPoint(`${d}/user2`), 'user2 untouched')
})

test('the chroot itself as a mount point is detached too; an aborted signal detaches nothing', async () => {
  const c = `${scratch.dir}/chroot`
  sh(`mkdir -p '${c}' && mount -t tmpfs self '${c}' && mkdir '${c}/dev' && mount -t tmpfs dev '${c}/dev'`)
  const ac = new AbortController()
  ac.abort()
  try {
    await detachMountsBelow(systemIo, c, { signal: ac.signal })
    assert.unreachable('should abort')
  } catch (err) {
    assert.is((err as Error).name, 'AbortError')
  }
  assert.equal(mountPointsBelow(c), [c, `${c}/dev`], 'nothing unmounted after abort')
  const { detached } = await detachMountsBelow(systemIo, c)
  assert.equal(detached, [`${c}/dev`, c])
  assert.equal(mountPointsBelow(c), [])
})

test('a chroot path through a symlink is refused: mountinfo would see no mount below it', async () => {
  const d = scratch.dir
  sh(`mkdir -p '${d}/real/run' && mount -t tmpfs r '${d}/real/run' && ln -s real '${d}/alias'`)
  await rejects(detachMountsBelow(systemIo, `${d}/alias`), 'EREFUSED')
  assert.ok(isMountPoint(`${d}/real/run`))
})

test.run()

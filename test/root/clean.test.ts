/**
 * The real run, end to end through the CLI, replaying both seed incidents (shared/INCIDENTS.md)
 * on real mounts, locks and processes in a private mount namespace.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import * as net from 'node:net'
import { assertRootSandbox, isMountPoint, listing, mountPointsBelow, sh } from '../helpers/sys.js'
import { buildFixture, makeMiniChroot, runCli, type Fixture } from '../helpers/fixture.js'
import { systemIo } from '../../src/io.js'
import { silentLogger } from '../../src/logger.js'
import { takeSnapshot } from '../../src/snapshot.js'
import { plan } from '../../src/plan.js'
import { execute } from '../../src/execute.js'

assertRootSandbox()

let fx: Fixture
let runLock: string
test.before.each(() => {
  fx = buildFixture()
  runLock = `${fx.scratch.dir}/run.lock`
})
test.after.each(() => fx.cleanup())

const statOf = (p: string) => {
  const st = fs.statSync(p)
  return `${st.ino}:${st.mode}:${st.size}:${st.mtimeMs}`
}

test('seed incident 1: root is detached, every host user mount survives with its contents', () => {
  const hostBefore = listing(fx.hostRun)
  const rootFiles = listing(`${fx.group}/root/bin`)
  const r = runCli(['--build-root', fx.buildRoot, '--run-lock', runLock, '--json'])
  const out = JSON.parse(r.stdout)
  const root = out.chroots.find((c: { path: string }) => c.path === `${fx.group}/root`)
  assert.is(root.outcome, 'detached', r.stderr)
  assert.equal(mountPointsBelow(`${fx.group}/root`), [], 'no mount left in root')
  for (const u of ['1000', '1001', '1002']) {
    assert.ok(isMountPoint(`${fx.hostRun}/user/${u}`), `host /run/user/${u} still mounted`)
    assert.is(fs.readFileSync(`${fx.hostRun}/user/${u}/session`, 'utf8'), `session of ${u}\n`)
  }
  assert.is(listing(fx.hostRun), hostBefore)
  assert.is(listing(`${fx.group}/root/bin`), rootFiles, 'root keeps its files')
  assert.ok(fs.existsSync(`${fx.group}/root/startdir/PKGBUILD`))
})

test('stale copies are removed, busy ones kept, lock files survive every outcome; exit 0', () => {
  const locks = ['root', 'stale', 'fresh', 'flocked', 'posixlocked', 'chrooted', 'otherns', 'cwdinside'].map(
    (n) => [`${fx.group}/${n}.lock`, statOf(`${fx.group}/${n}.lock`)] as const,
  )
  const canaryBefore = listing(fx.canary)
  const r = runCli(['--build-root', fx.buildRoot, '--run-lock', runLock, '--json'])
  assert.is(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  assert.is(out.dryRun, false)
  const outcome = (n: string) => out.chroots.find((c: { path: string }) => c.path.endsWith(`/${n}`))?.outcome
  assert.is(outcome('stale'), 'removed')
  assert.is(outcome('old'), 'removed')
  for (const n of ['fresh', 'flocked', 'posixlocked', 'chrooted', 'otherns', 'cwdinside', 'evil']) {
    assert.is(outcome(n), 'kept', n)
    if (n !== 'evil') assert.ok(fs.existsSync(`${fx.group}/${n}/bin/busybox`), `${n} intact`)
  }
  assert.not.ok(fs.existsSync(`${fx.group}/stale`))
  assert.not.ok(fs.existsSync(`${fx.buildRoot}/multilib-x86_64/old`))
  for (const [p, st] of locks) assert.is(statOf(p), st, `lock file ${p} untouched`)
  assert.ok(fs.existsSync(`${fx.buildRoot}/multilib-x86_64/old.lock`), 'lock of a removed copy stays')
  assert.is(fs.readlinkSync(`${fx.group}/evil`), fx.canary)
  assert.is(listing(fx.canary), canaryBefore)
  assert.match(r.stderr, /removed 2 \(.* freed\), detached 1, kept \d+, failed 0/)
  const stale = out.chroots.find((c: { path: string }) => c.path.endsWith('/stale'))
  assert.ok(stale.freedBytes > 0, 'freed bytes reported')
})

test('seed incident 2: a stale copy with a /run tmpfs (live socket) and a same-fs bind mount is removed; socket and data survive', async () => {
  const copy = `${fx.group}/stale`
  const precious = `${fx.scratch.dir}/precious`
  sh(`mkdir -p '${precious}' && for i in 1 2 3; do echo data$i > '${precious}/f'$i; done`)
  const preciousBefore = listing(precious)
  // A /run-like tmpfs with a live unix socket (the D-Bus socket of the incident).
  const sysRun = `${fx.scratch.dir}/sysrun`
  sh(`mkdir -p '${sysRun}' && mount -t tmpfs sysrun '${sysRun}' && mkdir -p '${sysRun}/dbus'`)
  const socketPath = `${sysRun}/dbus/system_bus_socket`
  const server = net.createServer().listen(socketPath)
  await new Promise((res) => server.once('listening', res))
  try {
    sh(`mount --bind '${sysRun}' '${copy}/run'
        mkdir -p '${copy}/srv/data' && mount --bind '${precious}' '${copy}/srv/data'
        touch -h -d '30 days ago' '${copy}' '${copy}'/* '${copy}.lock'`)
    assert.ok(fs.statSync(`${copy}/run/dbus/system_bus_socket`).isSocket(), 'socket visible through the copy')
    const r = runCli(['--build-root', fx.buildRoot, '--run-lock', runLock, '--json'])
    const out = JSON.parse(r.stdout)
    assert.is(out.chroots.find((c: { path: string }) => c.path === copy).outcome, 'removed', r.stderr)
    assert.not.ok(fs.existsSync(copy))
    assert.ok(fs.statSync(socketPath).isSocket(), 'the D-Bus-like socket survives')
    assert.ok(isMountPoint(sysRun), 'the /run-like tmpfs is still mounted on the host side')
    assert.is(listing(precious), preciousBefore, 'bind-mounted data intact')
  } finally {
    server.close()
  }
})

test('a copy whose mounts cannot be detached fails, nothing in it is deleted, the others are still handled; exit 1', () => {
  const copy = `${fx.group}/stale`
  // An unbindable-free but busy case: make umount fail by mounting a tmpfs and holding the
  // mount point busy is not enough with -l, so use a fake `umount` on PATH that fails.
  const fakeBin = `${fx.scratch.dir}/fakebin`
  sh(`mkdir -p '${fakeBin}' && printf '#!/bin/sh\\necho "umount: target is busy" >&2\\nexit 32\\n' > '${fakeBin}/umount' && chmod +x '${fakeBin}/umount'
      mount -t tmpfs leaked '${copy}/tmp' && echo x > '${copy}/tmp/inside'
      touch -h -d '30 days ago' '${copy}' '${copy}'/* '${copy}.lock'`)
  const before = listing(copy)
  const r = runCli(['--build-root', fx.buildRoot, '--run-lock', runLock, '--json'], { PATH: `${fakeBin}:${process.env['PATH']}` })
  assert.is(r.status, 1, r.stderr)
  const out = JSON.parse(r.stdout)
  const c = out.chroots.find((x: { path: string }) => x.path === copy)
  assert.is(c.outcome, 'failed')
  assert.match(c.error, /tmp/)
  assert.is(listing(copy), before, 'nothing deleted after a failed unmount')
  assert.is(out.chroots.find((x: { path: string }) => x.path.endsWith('/old')).outcome, 'removed', 'the other group was still cleaned')
  // The polluted root's detach fails the same way: reported, and the host keeps its mounts.
  assert.is(out.chroots.find((x: { path: string }) => x.path === `${fx.group}/root`).outcome, 'failed')
  for (const u of ['1000', '1001', '1002']) assert.ok(isMountPoint(`${fx.hostRun}/user/${u}`))
  assert.match(r.stderr, /failed 2/)
  assert.match(r.stderr, /umount: target is busy/)
})

test('a second run while one holds the run lock exits 75 naming the holder', () => {
  const holder = fx.spawn('runlock', `exec flock '${runLock}' sleep 600`)
  const end = Date.now() + 3000
  while (!fs.readFileSync('/proc/locks', 'utf8').includes(`:${fs.existsSync(runLock) ? fs.statSync(runLock).ino : -1} `)) {
    if (Date.now() > end) throw new Error('run lock not taken')
  }
  const r = runCli(['--build-root', fx.buildRoot, '--run-lock', runLock])
  assert.is(r.status, 75, r.stderr)
  assert.match(r.stderr, new RegExp(`another build-cleaner run is active: .*${holder}`))
  assert.ok(fs.existsSync(`${fx.group}/stale`), 'nothing was done')
})

test('a copy recreated by a build between planning and acting is not removed (identity re-checked)', async () => {
  const snapshot = await takeSnapshot(systemIo, [fx.buildRoot])
  const decisions = plan(snapshot, { maxAgeMs: 7 * 24 * 3600_000 }).filter((d) => d.path === `${fx.group}/stale`)
  assert.is(decisions[0]?.action, 'remove')
  fs.rmSync(`${fx.group}/stale`, { recursive: true })
  makeMiniChroot(`${fx.group}/stale`)
  const [result] = await execute(decisions, { io: systemIo, log: silentLogger, buildRoots: [fx.buildRoot] })
  assert.is(result?.outcome, 'kept')
  assert.match(result?.notes?.join() ?? '', /changed since planned: recreated/)
  assert.ok(fs.existsSync(`${fx.group}/stale/bin/busybox`))
})

test.run()

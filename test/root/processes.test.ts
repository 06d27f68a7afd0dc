// Real processes using real chroots, found by scanProcesses + usersOfChroots: chrooted (found by
// path and identity), chrooted from another mount namespace through a bind mount at another path
// and after a lazy unmount (found by dev+ino only: readlink shows a foreign path or `/`), a cwd
// inside a chroot, an exe inside a chroot. Sibling chroots whose names share a prefix stay empty.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { spawn, type ChildProcess } from 'node:child_process'
import { assertRootSandbox, scratchTmpfs, sh } from '../helpers/sys.js'
import { untilReadable } from '../helpers/build-root.js'
import { systemIo } from '../../src/io.js'
import { scanProcesses, usersOfChroots, type ChrootIdentity } from '../../src/processes.js'

assertRootSandbox()

const link = (pid: number, what: string) => fs.readlinkSync(`/proc/${pid}/${what}`)

test('each helper process is attributed to exactly the chroot it uses, and how', async () => {
  const scratch = scratchTmpfs('bc-processes-')
  const helpers: ChildProcess[] = []
  const start = (file: string, args: string[], cwd = '/'): number => {
    const child = spawn(file, args, { stdio: 'ignore', cwd })
    helpers.push(child)
    assert.ok(child.pid, `${file} started`)
    return child.pid!
  }
  const savedCwd = process.cwd()
  try {
    const g = `${scratch.dir}/extra-x86_64`
    // Each used chroot has an unused sibling sharing its name as a prefix, in both directions.
    const names = ['chrooted', 'chrooted2', 'nsbind', 'nsbind2', 'cwd2', 'cwd', 'exe', 'exe2', 'lazy', 'lazy2', 'self']
    for (const name of names) {
      fs.mkdirSync(`${g}/${name}/bin`, { recursive: true })
      fs.mkdirSync(`${g}/${name}/build`)
      fs.copyFileSync('/bin/busybox', `${g}/${name}/bin/busybox`)
      fs.chmodSync(`${g}/${name}/bin/busybox`, 0o755)
      fs.symlinkSync('busybox', `${g}/${name}/bin/sh`)
      fs.symlinkSync('busybox', `${g}/${name}/bin/sleep`)
    }
    const elsewhere = `${scratch.dir}/elsewhere`
    const lazyMount = `${scratch.dir}/lazymount`
    fs.mkdirSync(elsewhere)
    fs.mkdirSync(lazyMount)

    // (a) chrooted into `chrooted`
    const a = start('chroot', [`${g}/chrooted`, '/bin/busybox', 'sleep', '60'])
    // (b) chrooted into `nsbind` from another mount namespace, through a bind mount at another path
    const b = start('unshare', [
      '-m', '--propagation', 'private', 'sh', '-c',
      `mount --bind '${g}/nsbind' '${elsewhere}' && exec chroot '${elsewhere}' /bin/busybox sleep 60`,
    ])
    // (c) cwd inside `cwd2`
    const c = start('sh', ['-c', `cd '${g}/cwd2/build' && exec sleep 60`])
    // (d) exe inside `exe`
    const d = start(`${g}/exe/bin/busybox`, ['sleep', '60'])
    // (e) chrooted into `lazy` through a bind mount that is then lazily unmounted
    sh(`mount --bind '${g}/lazy' '${lazyMount}'`)
    const e = start('chroot', [lazyMount, '/bin/busybox', 'sleep', '60'])

    await untilReadable('a', () => link(a, 'exe') === `${g}/chrooted/bin/busybox`)
    await untilReadable('b', () => link(b, 'exe') === `${elsewhere}/bin/busybox`)
    await untilReadable('c', () => link(c, 'cwd') === `${g}/cwd2/build` && !link(c, 'exe').endsWith('sh'))
    await untilReadable('d', () => link(d, 'exe') === `${g}/exe/bin/busybox`)
    await untilReadable('e', () => link(e, 'exe') === `${lazyMount}/bin/busybox`)
    sh(`umount -l '${lazyMount}'`)

    // We stand in `self` ourselves while scanning: the scan must leave us out.
    process.chdir(`${g}/self/build`)
    const scan = scanProcesses(systemIo)
    process.chdir(savedCwd)

    // The scenarios are what they claim: readlink shows a foreign path for (b) and `/` for (e).
    const info = (pid: number) => scan.processes.find((p) => p.pid === pid)
    assert.is(info(b)?.root?.path, elsewhere)
    assert.is(info(e)?.root?.path, '/')
    assert.is(info(e)?.cwd, '/')
    assert.not.ok(info(process.pid), 'our own pid is not scanned')

    const chroots: ChrootIdentity[] = names.map((name) => {
      const st = fs.statSync(`${g}/${name}`)
      return { path: `${g}/${name}`, dev: st.dev, ino: st.ino }
    })
    const users = usersOfChroots(scan, chroots)
    const ours = new Set([a, b, c, d, e])
    const attributed = Object.fromEntries(
      [...users].map(([path, list]) => [path.slice(g.length + 1), list.filter((u) => ours.has(u.pid)).map((u) => `${u.pid}:${u.how}`)]),
    )
    assert.equal(attributed, {
      chrooted: [`${a}:root`],
      chrooted2: [],
      nsbind: [`${b}:root`],
      nsbind2: [],
      cwd2: [`${c}:cwd`],
      cwd: [],
      exe: [`${d}:exe`],
      exe2: [],
      lazy: [`${e}:root`],
      lazy2: [],
      self: [],
    })
    // Nobody else on this machine uses our scratch chroots.
    for (const [path, list] of users) for (const u of list) assert.ok(ours.has(u.pid), `unexpected user ${u.pid} (${u.command}) of ${path}`)
    assert.is(users.get(`${g}/chrooted`)?.[0]?.command, 'busybox')

    // excludePids leaves a helper out.
    const without = usersOfChroots(scanProcesses(systemIo, { excludePids: [c] }), chroots)
    assert.equal(without.get(`${g}/cwd2`), [])
  } finally {
    process.chdir(savedCwd)
    for (const child of helpers) child.kill('SIGKILL')
    await Promise.all(helpers.map((child) => (child.exitCode === null && child.signalCode === null ? new Promise((r) => child.once('exit', r)) : undefined)))
    scratch.cleanup()
  }
})

test.run()

/**
 * The one-filesystem remover on real trees, real mounts and real races (seed incident 2: a
 * cleanup walked into a /run mounted in a chroot and deleted the host's D-Bus socket).
 * Every test checks that a canary next to the tree (same tmpfs: an escaping walk would reach
 * it) is byte-for-byte unchanged, and first proves that the danger is real.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import * as net from 'node:net'
import { spawnSync } from 'node:child_process'
import { assertRootSandbox, isMountPoint, listing, sh } from '../helpers/sys.js'
import { brief, chainDepth, errno, fdPath, makeChain, makeWorld, nameIs, openFds, tripwireOps, wrapOps, type World } from '../helpers/remove-tree.js'
import { removeTree, type RemoveResult } from '../../src/remove-tree.js'
import { preservingCwd, systemDirOps } from '../../src/dir-ops.js'
import { CleanerError } from '../../src/errors.js'

assertRootSandbox()

let w: World
const projectCwd = process.cwd()
test.before.each(() => {
  w = makeWorld()
})
test.after.each(() => {
  process.chdir(projectCwd)
  w.cleanup()
})

const countEntries = (dir: string): number => Number(sh(`find '${dir}' | wc -l`).trim())
const okResult = (r: RemoveResult): void => assert.equal({ ok: r.ok, skipped: r.skipped, errors: r.errors }, { ok: true, skipped: [], errors: [] })
const refused = (e: unknown): boolean => e instanceof CleanerError && e.code === 'EREFUSED'

test('a plain tree (files, empty dirs, 300-deep nesting) is removed completely and every entry counted; cwd and fds unchanged', () => {
  const t = w.tree
  sh(`cd '${t}'; mkdir -p a/b/c empty1 e/empty2; for i in $(seq 50); do echo $i > a/f$i; echo $i > a/b/g$i; done
      ln -s f1 a/rel-link; touch a/b/c/.hidden`)
  makeChain(`${t}/deep`, 300)
  const total = countEntries(t)
  assert.ok(total > 400, `tree has ${total} entries`)
  process.chdir(w.canary) // the cwd must come back to exactly this
  const fds = openFds()
  const r = removeTree(t, { mountPoints: w.mounts() })
  okResult(r)
  assert.is(r.entries, total)
  assert.not.ok(fs.existsSync(t))
  assert.is(process.cwd(), w.canary)
  assert.is(openFds(), fds, 'no fd leaked')
  assert.is(listing(w.canary), w.canaryBefore)
})

test("entries of unknown d_type (filesystems without it) are typed by lstat and removed, links never followed", () => {
  const t = w.tree
  sh(`cd '${t}'; mkdir -p a/b; echo > a/f; echo > a/b/g; ln -s '${w.canary}' a/link; mkfifo a/fifo`)
  let unknown = 0
  const ops = wrapOps({
    list: (fd) => Array.from(systemDirOps.list(fd), (e) => (unknown++, { name: e.name, type: 'unknown' as const })),
  })
  const total = countEntries(t)
  const r = removeTree(t, { mountPoints: w.mounts(), ops })
  okResult(r)
  assert.is(r.entries, total)
  assert.is(unknown, total - 1, 'every entry came as unknown')
  assert.is(listing(w.canary), w.canaryBefore)
})

test('seed incident 2: a tmpfs /run with a live socket and a same-filesystem bind mount are skipped, all else removed', async () => {
  const t = w.tree
  const precious = `${w.scratch.dir}/precious`
  sh(`mkdir -p '${t}/run' '${t}/srv/data' '${t}/usr/lib' '${precious}/db'
      echo data > '${precious}/db/table'; echo lib > '${t}/usr/lib/libc.so'
      mount -t tmpfs hostrun '${t}/run'; mkdir '${t}/run/dbus'; echo 1 > '${t}/run/dbus/pid'
      mount --bind '${precious}' '${t}/srv/data'`)
  const socket = `${t}/run/dbus/system_bus_socket`
  const server = net.createServer((c) => c.end('hello\n'))
  await new Promise<void>((resolve) => server.listen(socket, resolve))
  try {
    // The danger is real: st_dev alone (rm --one-file-system) would walk into srv/data.
    assert.is(fs.statSync(`${t}/srv/data`).dev, fs.statSync(t).dev)
    assert.ok(fs.lstatSync(socket).isSocket())
    const preciousBefore = listing(precious)
    const runBefore = listing(`${t}/run`)
    const r = removeTree(t, { mountPoints: w.mounts() })
    assert.is(r.ok, false)
    assert.equal(r.skipped.map((p) => p.message).sort(), [`skipping '${t}/run', since it's a mount point`, `skipping '${t}/srv/data', since it's a mount point`])
    assert.equal(r.errors, [], 'the directories left non-empty are a consequence, not news')
    assert.is(listing(precious), preciousBefore)
    assert.is(listing(`${t}/run`), runBefore)
    assert.ok(isMountPoint(`${t}/run`) && isMountPoint(`${t}/srv/data`))
    assert.equal(fs.readdirSync(t).sort(), ['run', 'srv'], 'everything else is gone')
    assert.equal(fs.readdirSync(`${t}/srv`), ['data'])
    const reply = await new Promise<string>((resolve, reject) => {
      const c = net.connect(socket)
      let got = ''
      c.on('data', (d) => (got += d)).on('end', () => resolve(got)).on('error', reject)
    })
    assert.is(reply, 'hello\n', 'the socket still answers')
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    await new Promise((resolve) => server.close(resolve))
  }
})

test('mounts that appeared after mountinfo was read (mountPoints empty): the tmpfs stops at st_dev, the same-fs bind mount at its mount id', () => {
  const t = w.tree
  const precious = `${w.scratch.dir}/precious`
  sh(`mkdir -p '${t}/run' '${t}/srv/data' '${precious}'; echo data > '${precious}/table'; echo x > '${t}/other'
      mount -t tmpfs hostrun '${t}/run'; echo 1 > '${t}/run/pid'
      mount --bind '${precious}' '${t}/srv/data'`)
  assert.is(fs.statSync(`${t}/srv/data`).dev, fs.statSync(t).dev)
  const preciousBefore = listing(precious)
  const runBefore = listing(`${t}/run`)
  const r = removeTree(t, { mountPoints: new Set() })
  assert.is(r.ok, false)
  assert.equal(brief(r.skipped), [`fdinfo EMOUNTPOINT ${t}/srv/data`, `fstat EXDEV ${t}/run`])
  assert.equal(r.skipped.map((p) => p.message).sort(), [`skipping '${t}/run', since it's on a different device`, `skipping '${t}/srv/data', since it's a mount point`])
  assert.equal(r.errors, [])
  assert.is(listing(precious), preciousBefore)
  assert.is(listing(`${t}/run`), runBefore)
  assert.not.ok(fs.existsSync(`${t}/other`))
  assert.is(listing(w.canary), w.canaryBefore)
})

test('hostile contents: links out of the tree, special files, unreadable dirs, odd names, a 2,000-deep chain', () => {
  const t = w.tree
  const c = w.canary
  sh(`cd '${t}'; mkdir -p l a/b/c ro noperm names special
      ln -s / l/slash; ln -s '${c}' l/canary; ln -s '${c}/precious' l/file; ln -s ../../../.. a/b/c/up
      ln -s ../../canary l/rel-canary; ln -s loop l/loop; ln -s nowhere l/dangling; ln '${c}/precious' l/hardlink
      mkfifo special/fifo; mknod special/null c 1 3
      python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' special/sock
      touch ro/f1 ro/f2; mkdir ro/sub; touch ro/sub/f; chmod 0555 ro ro/sub
      touch noperm/f1; mkdir noperm/sub; touch noperm/sub/f; chmod 000 noperm/sub noperm`)
  for (const n of ['with\nnewline', ' spaces  ', 'back\\slash', '-rf', '--', '-', '*', "quote'", '.hidden', '..more']) {
    fs.writeFileSync(`${t}/names/${n}`, n)
    fs.mkdirSync(`${t}/names/d${n}`)
    fs.writeFileSync(`${t}/names/d${n}/${n}`, n)
  }
  fs.writeFileSync(Buffer.from(`${t}/names/not-utf8-\xff\xfe`, 'latin1'), 'bytes')
  makeChain(`${t}/chain`, 2000)
  // The dangers are real: the links reach out, the special files are what they claim.
  assert.is(fs.readFileSync(`${t}/l/canary/precious`, 'utf8'), 'precious\n')
  assert.is(fs.readFileSync(`${t}/l/rel-canary/precious`, 'utf8'), 'precious\n')
  assert.is(fs.realpathSync(`${t}/a/b/c/up`), w.scratch.dir)
  assert.ok(fs.readdirSync(`${t}/l/slash`).includes('proc'))
  assert.ok(fs.lstatSync(`${t}/special/fifo`).isFIFO() && fs.lstatSync(`${t}/special/sock`).isSocket())
  assert.ok(fs.readdirSync(`${t}/names`, { encoding: 'buffer' }).some((n) => n.includes(0xff)))
  assert.equal(chainDepth(`${t}/chain`), { depth: 2000, bottom: true })
  const r = removeTree(t, { mountPoints: w.mounts() })
  okResult(r)
  assert.not.ok(fs.existsSync(t))
  assert.is(listing(w.canary), w.canaryBefore)
  assert.ok(fs.existsSync('/etc/passwd') && fs.existsSync('/proc/self'), 'the links to / were not followed')
})

test('swap race: a directory swapped for a symlink to the canary right before it is opened never lets the walk in (50 x absolute, 50 x relative)', () => {
  for (const target of [w.canary, '../../canary']) {
    for (let i = 0; i < 50; i++) {
      const t = w.tree
      sh(`mkdir -p '${t}/a/victim/inner' '${t}/b'; echo v > '${t}/a/victim/inner/v'; echo s > '${t}/a/sibling'; echo b > '${t}/b/f'`)
      let attacked = 0
      const ops = wrapOps({
        openDir(fd, name) {
          if (fd !== undefined && nameIs(name, 'victim') && attacked++ === 0) {
            fs.renameSync(`${t}/a/victim`, `${t}/a/victim.old`)
            fs.symlinkSync(target, `${t}/a/victim`)
            assert.is(fs.readFileSync(`${t}/a/victim/precious`, 'utf8'), 'precious\n', 'the swapped link reaches the canary')
          }
          return systemDirOps.openDir(fd, name)
        },
      })
      const r = removeTree(t, { mountPoints: w.mounts(), ops })
      assert.is(attacked, 1, 'the attack ran once')
      okResult(r)
      assert.not.ok(fs.existsSync(t), 'the symlink and the renamed directory are gone with the tree')
      assert.is(listing(w.canary), w.canaryBefore, `iteration ${i} with ${target}`)
      fs.mkdirSync(t)
    }
  }
})

test('swap race: a file swapped for a directory with contents right before unlink is entered (EISDIR) and removed', () => {
  const t = w.tree
  sh(`mkdir -p '${t}/a'; echo f > '${t}/a/swapme'; echo s > '${t}/a/sibling'`)
  let swapped = false
  const ops = wrapOps({
    unlink(fd, name) {
      if (nameIs(name, 'swapme') && !swapped) {
        swapped = true
        sh(`rm '${t}/a/swapme'; mkdir -p '${t}/a/swapme/sub'; echo 1 > '${t}/a/swapme/one'; echo 2 > '${t}/a/swapme/sub/two'`)
      }
      systemDirOps.unlink(fd, name)
    },
  })
  const r = removeTree(t, { mountPoints: w.mounts(), ops })
  assert.ok(swapped)
  okResult(r)
  assert.is(r.entries, 7, 'tree, a, sibling, swapme, one, sub, two')
  assert.not.ok(fs.existsSync(t))
  assert.is(listing(w.canary), w.canaryBefore)
})

test('an entry that keeps flipping between directory and symlink ends in a reported error, not a loop', () => {
  const t = w.tree
  sh(`mkdir -p '${t}/flip'; echo x > '${t}/keep'`)
  let flips = 0
  const ops = wrapOps({
    openDir(fd, name) {
      if (fd !== undefined && nameIs(name, 'flip')) {
        flips++
        sh(`rm -rf '${t}/flip'; ln -s '${w.canary}' '${t}/flip'`)
      }
      return systemDirOps.openDir(fd, name)
    },
    unlink(fd, name) {
      if (nameIs(name, 'flip')) {
        flips++
        sh(`rm '${t}/flip'; mkdir '${t}/flip'; echo x > '${t}/flip/x'`)
      }
      systemDirOps.unlink(fd, name)
    },
  })
  const r = removeTree(t, { mountPoints: w.mounts(), ops })
  assert.is(r.ok, false)
  assert.ok(flips >= 4 && flips <= 10, `bounded: ${flips} flips`)
  assert.equal(brief(r.errors), [`unlink ELOOP ${t}/flip`])
  assert.not.ok(fs.existsSync(`${t}/keep`))
  assert.is(listing(w.canary), w.canaryBefore)
})

test('faults through the seam are reported with path, syscall and code; siblings are still removed', () => {
  const t = w.tree
  sh(`cd '${t}'; mkdir a b c d d/sub e f; echo > a/locked; echo > a/other; echo > b/f1; echo > b/f2; echo > c/x
      echo > d/keep1; echo > d/sub/keep2; echo > e/e1; echo > f/f1; echo > f/f2; echo > z1`)
  const ops = wrapOps({
    unlink(fd, name) {
      if (nameIs(name, 'locked')) throw errno('EACCES', 'unlink')
      systemDirOps.unlink(fd, name)
    },
    rmdir(fd, name) {
      if (nameIs(name, 'c')) throw errno('EBUSY', 'rmdir')
      systemDirOps.rmdir(fd, name)
    },
    openDir(fd, name) {
      if (nameIs(name, 'd')) throw errno('EIO', 'open')
      return systemDirOps.openDir(fd, name)
    },
    list(fd) {
      const where = fdPath(fd)
      if (where === `${t}/e`) throw errno('EIO', 'opendir')
      const inner = systemDirOps.list(fd)
      if (where !== `${t}/f`) return inner
      return (function* () {
        let n = 0
        for (const e of inner) {
          if (n++ === 1) throw errno('EIO', 'scandir')
          yield e
        }
      })()
    },
  })
  const dBefore = listing(`${t}/d`)
  const fds = openFds()
  const r = removeTree(t, { mountPoints: w.mounts(), ops })
  assert.is(r.ok, false)
  assert.equal(brief(r.errors), [`open EIO ${t}/d`, `opendir EIO ${t}/e`, `rmdir EBUSY ${t}/c`, `scandir EIO ${t}/f`, `unlink EACCES ${t}/a/locked`])
  assert.ok(r.errors.every((p) => p.message === `${p.syscall} '${p.path}': ${p.code}`))
  assert.equal(r.skipped, [])
  assert.equal(fs.readdirSync(t).sort(), ['a', 'c', 'd', 'e', 'f'], 'b and z1 removed')
  assert.equal(fs.readdirSync(`${t}/a`), ['locked'])
  assert.equal(fs.readdirSync(`${t}/c`), [], 'emptied, only its rmdir failed')
  assert.is(listing(`${t}/d`), dBefore, 'a directory that could not be opened is untouched')
  assert.equal(fs.readdirSync(`${t}/e`), ['e1'])
  assert.is(fs.readdirSync(`${t}/f`).length, 1, 'the entry read before the failure was removed')
  assert.is(openFds(), fds, 'no fd leaked')
  assert.is(listing(w.canary), w.canaryBefore)
})

test('an immutable file (chattr +i) is a real EPERM: reported, not mistaken for a directory, siblings removed', () => {
  const t = w.tree
  sh(`mkdir -p '${t}/a'; echo x > '${t}/a/immutable'; echo y > '${t}/a/other'; chattr +i '${t}/a/immutable'`)
  try {
    const r = removeTree(t, { mountPoints: w.mounts() })
    assert.is(r.ok, false)
    assert.equal(brief(r.errors), [`unlink EPERM ${t}/a/immutable`])
    assert.equal(fs.readdirSync(`${t}/a`), ['immutable'])
  } finally {
    sh(`chattr -i '${t}/a/immutable'`)
  }
  assert.is(listing(w.canary), w.canaryBefore)
})

test("refusals by path: '/', relative, non-canonical; nothing is touched", () => {
  const t = w.tree
  sh(`mkdir -p '${t}/a'; echo x > '${t}/a/f'`)
  const before = listing(t)
  const cwd = process.cwd()
  for (const p of ['/', 'tmp/x', '', `${t}/`, `${t}/.`, `${t}/a/..`, `${w.scratch.dir}//tree`, `${w.scratch.dir}/./tree`, `${t}/../tree`]) {
    assert.throws(() => removeTree(p, { mountPoints: w.mounts(), ops: tripwireOps }), refused, `refused: ${JSON.stringify(p)}`)
  }
  assert.is(listing(t), before)
  assert.is(process.cwd(), cwd)
  assert.is(listing(w.canary), w.canaryBefore)
})

test('refusals by identity: a planned identity that no longer matches, a symlink root; nothing is touched', () => {
  const t = w.tree
  sh(`mkdir -p '${t}/a'; echo x > '${t}/a/f'; ln -s tree '${w.scratch.dir}/link'`)
  const before = listing(t)
  const st = fs.statSync(t)
  for (const expect of [{ dev: st.dev, ino: st.ino + 1 }, { dev: st.dev + 1, ino: st.ino }]) {
    assert.throws(() => removeTree(t, { mountPoints: w.mounts(), expect }), refused)
  }
  assert.throws(() => removeTree(`${w.scratch.dir}/link`, { mountPoints: w.mounts() }), refused, 'the root is a symlink')
  assert.throws(() => removeTree(`${w.scratch.dir}/link/a`, { mountPoints: w.mounts() }), refused, "the root's parent is a symlink")
  assert.is(listing(t), before)
  assert.ok(fs.lstatSync(`${w.scratch.dir}/link`).isSymbolicLink())
  // The matching identity is accepted, so the refusals above were about the identity.
  okResult(removeTree(t, { mountPoints: w.mounts(), expect: { dev: st.dev, ino: st.ino } }))
  assert.is(listing(w.canary), w.canaryBefore)
})

test('a root that is itself a mount point is refused, by mountinfo or by mount id alone (tmpfs and same-fs bind mount)', () => {
  const d = w.scratch.dir
  sh(`mkdir -p '${d}/mnt' '${d}/src' '${d}/bound'; echo x > '${d}/src/f'
      mount -t tmpfs m '${d}/mnt'; echo y > '${d}/mnt/f'; mount --bind '${d}/src' '${d}/bound'`)
  const before = listing(d)
  for (const root of [`${d}/mnt`, `${d}/bound`]) {
    assert.throws(() => removeTree(root, { mountPoints: w.mounts() }), refused, `${root} by mountinfo`)
    assert.throws(() => removeTree(root, { mountPoints: new Set() }), refused, `${root} by mount id`)
  }
  assert.is(listing(d), before)
})

test('a root that is already gone is a success with nothing removed', () => {
  const r = removeTree(`${w.scratch.dir}/never-was`, { mountPoints: w.mounts() })
  assert.equal(r, { ok: true, entries: 0, skipped: [], errors: [] })
  assert.is(listing(w.canary), w.canaryBefore)
})

test('a file bind mount (etc/resolv.conf) is skipped and its source intact; unknown to mountinfo, unlink meets EBUSY', () => {
  const t = w.tree
  const src = `${w.scratch.dir}/resolv.conf`
  sh(`mkdir -p '${t}/etc'; echo 'nameserver 10.0.0.1' > '${src}'; echo chroot > '${t}/etc/resolv.conf'; echo h > '${t}/etc/hosts'
      mount --bind '${src}' '${t}/etc/resolv.conf'`)
  assert.is(fs.readFileSync(`${t}/etc/resolv.conf`, 'utf8'), 'nameserver 10.0.0.1\n')
  const srcBefore = listing(src)
  const r1 = removeTree(t, { mountPoints: w.mounts() })
  assert.is(r1.ok, false)
  assert.equal(r1.skipped.map((p) => p.message), [`skipping '${t}/etc/resolv.conf', since it's a mount point`])
  assert.equal(fs.readdirSync(`${t}/etc`), ['resolv.conf'])
  const r2 = removeTree(t, { mountPoints: new Set() })
  assert.is(r2.ok, false)
  assert.equal(brief(r2.errors), [`unlink EBUSY ${t}/etc/resolv.conf`])
  assert.is(listing(src), srcBefore)
  assert.ok(isMountPoint(`${t}/etc/resolv.conf`))
  assert.is(listing(w.canary), w.canaryBefore)
})

test('btrfs: a subvolume root (own st_dev, same mount id) may be removed; a nested subvolume inside is skipped as another device', () => {
  const d = w.scratch.dir
  const m = `${d}/btrfs`
  sh(`truncate -s 200M '${d}/img'; mkfs.btrfs -q '${d}/img' >/dev/null 2>&1; mkdir '${m}'; mount -o loop '${d}/img' '${m}'`)
  try {
    sh(`btrfs -q subvolume create '${m}/vol'; mkdir -p '${m}/vol/usr/lib' '${m}/keep'; echo l > '${m}/vol/usr/lib/x'
        btrfs -q subvolume create '${m}/vol/nested'; echo n > '${m}/vol/nested/n'; echo k > '${m}/keep/k'`)
    assert.is.not(fs.statSync(`${m}/vol`).dev, fs.statSync(m).dev, 'a subvolume has its own st_dev')
    const keepBefore = listing(`${m}/keep`)
    const r1 = removeTree(`${m}/vol`, { mountPoints: w.mounts() })
    assert.is(r1.ok, false)
    assert.equal(r1.skipped.map((p) => p.message), [`skipping '${m}/vol/nested', since it's on a different device`])
    assert.equal(fs.readdirSync(`${m}/vol`), ['nested'])
    assert.is(fs.readFileSync(`${m}/vol/nested/n`, 'utf8'), 'n\n')
    okResult(removeTree(`${m}/vol/nested`, { mountPoints: w.mounts() }))
    okResult(removeTree(`${m}/vol`, { mountPoints: w.mounts() }))
    assert.not.ok(fs.existsSync(`${m}/vol`))
    assert.is(listing(`${m}/keep`), keepBefore)
  } finally {
    sh(`umount '${m}'`)
  }
  assert.is(listing(w.canary), w.canaryBefore)
})

test('a hostile depth that exhausts file descriptors (EMFILE) is a reported failure, not a crash', () => {
  const t = w.tree
  makeChain(`${t}/chain`, 200)
  const mod = new URL('../../src/remove-tree.js', import.meta.url).href
  const script = `const { removeTree } = await import(${JSON.stringify(mod)})
    const r = removeTree(${JSON.stringify(t)}, { mountPoints: new Set() })
    process.stdout.write(JSON.stringify(r))`
  const child = spawnSync('prlimit', ['--nofile=64:64', process.execPath, ...process.execArgv, '--input-type=module', '-e', script], { encoding: 'utf8' })
  assert.is(child.status, 0, child.stderr)
  const r = JSON.parse(child.stdout) as RemoveResult
  assert.is(r.ok, false)
  assert.is(r.errors.length, 1, JSON.stringify(r.errors))
  assert.is(r.errors[0]!.code, 'EMFILE')
  assert.match(r.errors[0]!.path, new RegExp(`^${t}/chain(/d){10,199}$`), 'failed somewhere down the chain')
  assert.equal(chainDepth(`${t}/chain`), { depth: 200, bottom: true }, 'nothing below the failure touched, nothing above removable')
  okResult(removeTree(t, { mountPoints: w.mounts() }))
  assert.is(listing(w.canary), w.canaryBefore)
})

test('cancellation stops the walk between steps and reports it; an already aborted signal touches nothing', () => {
  const t = w.tree
  sh(`cd '${t}'; for d in $(seq 10); do mkdir d$d; for f in $(seq 20); do echo > d$d/f$f; done; done`)
  const before = listing(t)
  const aborted = AbortSignal.abort()
  const r0 = removeTree(t, { mountPoints: w.mounts(), signal: aborted })
  assert.is(r0.ok, false)
  assert.equal(brief(r0.errors), [`removeTree ECANCELED ${t}`])
  assert.is(listing(t), before)
  const ac = new AbortController()
  let unlinks = 0
  const ops = wrapOps({
    unlink(fd, name) {
      systemDirOps.unlink(fd, name)
      if (++unlinks === 50) ac.abort()
    },
  })
  const cwd = process.cwd()
  const fds = openFds()
  const r = removeTree(t, { mountPoints: w.mounts(), ops, signal: ac.signal })
  assert.is(r.ok, false)
  assert.equal(brief(r.errors), [`removeTree ECANCELED ${t}`])
  assert.is(unlinks, 50, 'not one unlink after the abort')
  assert.ok(fs.existsSync(t))
  assert.is(process.cwd(), cwd)
  assert.is(openFds(), fds)
  assert.is(listing(w.canary), w.canaryBefore)
})

test('progress is reported while the walk runs, throttled, with growing counts', () => {
  const t = w.tree
  sh(`cd '${t}'; for f in $(seq 600); do echo > f$f; done`)
  const sleeper = new Int32Array(new SharedArrayBuffer(4))
  const ops = wrapOps({
    unlink(fd, name) {
      Atomics.wait(sleeper, 0, 0, 1) // 1 ms per file: the walk takes > 600 ms
      systemDirOps.unlink(fd, name)
    },
  })
  const seen: number[] = []
  const r = removeTree(t, { mountPoints: w.mounts(), ops, onProgress: (p) => seen.push(p.entries) })
  okResult(r)
  assert.ok(seen.length >= 1 && seen.length <= 7, `throttled: ${seen.join(',')}`)
  assert.ok(seen.every((n, i) => n > (seen[i - 1] ?? 0) && n <= r.entries), seen.join(','))
})

test('the cwd is restored and no fd leaks when removeTree throws (a bug inside an op)', () => {
  const t = w.tree
  sh(`mkdir -p '${t}/a/b'; echo > '${t}/a/b/f1'; echo > '${t}/a/b/f2'`)
  process.chdir(w.canary)
  const fds = openFds()
  let calls = 0
  const ops = wrapOps({
    unlink(fd, name) {
      systemDirOps.unlink(fd, name)
      if (++calls === 1) {
        assert.is.not(fs.realpathSync('.'), w.canary, 'the walk really moved the cwd')
        throw new TypeError('a bug in an op')
      }
    },
  })
  assert.throws(() => removeTree(t, { mountPoints: w.mounts(), ops }), (e: unknown) => e instanceof TypeError)
  assert.is(process.cwd(), w.canary)
  assert.is(openFds(), fds)
  assert.is(listing(w.canary), w.canaryBefore)
})

test('a listing that yields "..", "." or names with "/" (a hostile FUSE) is refused, never followed', () => {
  const t = w.tree
  sh(`mkdir -p '${t}/a'; echo > '${t}/a/f'`)
  const bad = ['..', '../../canary', '.', '', 'x/../../../canary']
  const ops = wrapOps({
    list(fd) {
      const inner = systemDirOps.list(fd)
      if (fdPath(fd) !== `${t}/a`) return inner
      return (function* () {
        for (const name of bad) yield { name, type: 'dir' as const }
        yield* inner
      })()
    },
  })
  const r = removeTree(t, { mountPoints: w.mounts(), ops })
  assert.is(r.ok, false)
  assert.equal(brief(r.errors), bad.map((n) => `readdir EINVAL ${t}/a/${n}`).sort())
  assert.is(listing(w.canary), w.canaryBefore)
  // The system ops refuse such names on their own too.
  preservingCwd(() => {
    const fd = systemDirOps.openDir(undefined, w.canary)
    try {
      for (const n of ['..', 'sub/deep.txt', '.', '']) {
        assert.throws(() => systemDirOps.unlink(fd, n), (e: unknown) => (e as { code?: string }).code === 'EINVAL', n)
        assert.throws(() => systemDirOps.openDir(fd, n), (e: unknown) => (e as { code?: string }).code === 'EINVAL', n)
      }
    } finally {
      systemDirOps.close(fd)
    }
  })
  assert.is(listing(w.canary), w.canaryBefore)
})

test('dir-ops: a closed fd number reused for another directory is never taken for the cwd it used to be', () => {
  const a = `${w.tree}/a`
  const b = `${w.tree}/b`
  sh(`mkdir -p '${a}' '${b}'; echo > '${a}/x'; echo > '${b}/x'`)
  preservingCwd(() => {
    const fa = systemDirOps.openDir(undefined, a)
    systemDirOps.unlink(fa, 'x') // the cwd is now a
    fs.writeFileSync(`${a}/x`, '')
    systemDirOps.close(fa)
    const fb = systemDirOps.openDir(undefined, b)
    try {
      assert.is(fb, fa, 'the kernel reused the fd number')
      systemDirOps.unlink(fb, 'x')
    } finally {
      systemDirOps.close(fb)
    }
  })
  assert.ok(fs.existsSync(`${a}/x`), 'a/x untouched')
  assert.not.ok(fs.existsSync(`${b}/x`), 'b/x removed')
})

test.run()

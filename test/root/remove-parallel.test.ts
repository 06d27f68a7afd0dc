/**
 * The parallel remover has exactly the safety of the sequential one (seed incident 2: a cleanup
 * walked into a /run mounted in a chroot and deleted the host's D-Bus socket), while its work
 * crosses process boundaries: every hostile case is run on twin trees, once by removeTree and
 * once by removeTreeParallel with helpers forked at once (`eager`), on demand and with every
 * directory handed out as a task (`splitEveryDirectory`), and the outcomes must be the same.
 * Every test checks the canary next to the trees (same tmpfs: an escaping walk would reach it).
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import * as net from 'node:net'
import { spawn, spawnSync } from 'node:child_process'
import { assertRootSandbox, isMountPoint, listing, sh } from '../helpers/sys.js'
import { brief, chainDepth, errno, makeChain, makeWorld, nameIs, openFds, wrapOps, type World } from '../helpers/remove-tree.js'
import { openRoot, removeTree, type RemoveResult } from '../../src/remove-tree.js'
import { Walker, type Task } from '../../src/remove-worker.js'
import { removeTreeParallel, startRemoveHelpers, type ParallelOptions } from '../../src/remove-parallel.js'
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

const MODES: readonly { readonly name: string; readonly opts: Partial<ParallelOptions> }[] = [
  { name: 'on demand, 2 walkers', opts: { workers: 2, eager: true } },
  { name: 'every directory a task, 3 walkers', opts: { workers: 3, eager: true, splitEveryDirectory: true } },
]

/** Runs removeTreeParallel and records which walkers (pids) took tasks. */
async function parallel(root: string, opts: Partial<ParallelOptions>, mountPoints = w.mounts()) {
  const takers = new Set<number>()
  const result = await removeTreeParallel(root, { mountPoints, ...opts, onTask: (t) => takers.add(t.pid) })
  const helpers = [...takers].filter((pid) => pid !== process.pid)
  return { result, helpers }
}

/** ok, counts, skips and errors with the tree's own path replaced, for comparing twins. */
const outcome = (r: RemoveResult, t: string) => ({
  ok: r.ok,
  entries: r.entries,
  skipped: brief(r.skipped).map((l) => l.split(t).join('<t>')),
  errors: brief(r.errors).map((l) => l.split(t).join('<t>')),
})

const twinOf = (t: string): string => `${t}-twin`
const okResult = (r: RemoveResult): void => assert.equal({ ok: r.ok, skipped: r.skipped, errors: r.errors }, { ok: true, skipped: [], errors: [] })
const refused = (e: unknown): boolean => e instanceof CleanerError && e.code === 'EREFUSED'
const alive = (pid: number): boolean => fs.existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))

/** An ordinary tree of 150 directories and 1,500 files. */
function ordinary(t: string): void {
  sh(`cd '${t}'; for a in $(seq 10); do for b in $(seq 15); do mkdir -p d$a/e$b; for c in $(seq 10); do echo > d$a/e$b/x$c; done; done; done`)
}

/** The hostile tree of the sequential tests, built by `sh` at `t` (run once per twin). */
function hostile(t: string): void {
  const c = w.canary
  sh(`mkdir -p '${t}'; cd '${t}'; mkdir -p l a/b/c ro noperm names special immutable
      ln -s / l/slash; ln -s '${c}' l/canary; ln -s '${c}/precious' l/file; ln -s ../../../.. a/b/c/up
      ln -s ../../canary l/rel-canary; ln -s loop l/loop; ln -s nowhere l/dangling; ln '${c}/precious' l/hardlink
      mkfifo special/fifo; mknod special/null c 1 3
      python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' special/sock
      touch ro/f1 ro/f2; mkdir ro/sub; touch ro/sub/f; chmod 0555 ro ro/sub
      touch noperm/f1; mkdir noperm/sub; touch noperm/sub/f; chmod 000 noperm/sub noperm
      echo x > immutable/file; echo y > immutable/other; chattr +i immutable/file`)
  for (const n of ['with\nnewline', ' spaces  ', 'back\\slash', '-rf', '--', '-', '*', "quote'", '.hidden', '..more']) {
    fs.writeFileSync(`${t}/names/${n}`, n)
    fs.mkdirSync(`${t}/names/d${n}`)
    fs.writeFileSync(`${t}/names/d${n}/${n}`, n)
  }
  fs.mkdirSync(Buffer.from(`${t}/names/dir-not-utf8-\xff\xfe`, 'latin1'))
  fs.writeFileSync(Buffer.from(`${t}/names/dir-not-utf8-\xff\xfe/file-\xfd`, 'latin1'), 'bytes')
  makeChain(`${t}/chain`, 300)
  for (let d = 0; d < 20; d++) sh(`mkdir -p '${t}/bulk/d${d}/e'; cd '${t}/bulk/d${d}'; for f in $(seq 30); do echo $f > f$f; echo $f > e/g$f; done`)
}

test('a plain tree is removed completely by several walkers: same count as removeTree, cwd and fds unchanged', async () => {
  for (const mode of MODES) {
    const t = w.tree
    for (const dir of [t, twinOf(t)]) {
      sh(`mkdir -p '${dir}'; cd '${dir}'; for a in $(seq 8); do for b in $(seq 6); do mkdir -p d$a/e$b/f; for c in $(seq 15); do echo > d$a/e$b/x$c; echo > d$a/e$b/f/y$c; done; done; done`)
      makeChain(`${dir}/deep`, 200)
    }
    process.chdir(w.canary)
    const fds = openFds()
    const seq = removeTree(twinOf(t), { mountPoints: w.mounts() })
    const { result, helpers } = await parallel(t, mode.opts)
    okResult(result)
    assert.equal(outcome(result, t), outcome(seq, twinOf(t)), mode.name)
    assert.ok(helpers.length > 0, `${mode.name}: a helper process took work`)
    assert.not.ok(fs.existsSync(t))
    assert.is(process.cwd(), w.canary)
    assert.is(openFds(), fds, `${mode.name}: no fd leaked`)
    assert.ok(helpers.every((pid) => !alive(pid)), 'the helpers are gone')
    assert.is(listing(w.canary), w.canaryBefore)
    fs.mkdirSync(t)
  }
})

test('hostile contents (links to / and the canary, ../.., fifo, socket, device, 0555/000 dirs, odd and non-UTF-8 names, chattr +i): same outcome as removeTree', async () => {
  const t = w.tree
  try {
    for (const mode of MODES) {
      fs.rmdirSync(t)
      hostile(t)
      hostile(twinOf(t))
      // The dangers are real: the links reach out.
      assert.is(fs.readFileSync(`${t}/l/canary/precious`, 'utf8'), 'precious\n')
      assert.is(fs.readFileSync(`${t}/l/rel-canary/precious`, 'utf8'), 'precious\n')
      assert.is(fs.realpathSync(`${t}/a/b/c/up`), w.scratch.dir)
      const seq = removeTree(twinOf(t), { mountPoints: w.mounts() })
      const { result, helpers } = await parallel(t, mode.opts)
      assert.equal(brief(seq.errors), [`unlink EPERM ${twinOf(t)}/immutable/file`], 'only the immutable file stays')
      assert.equal(outcome(result, t), outcome(seq, twinOf(t)), mode.name)
      assert.ok(helpers.length > 0, `${mode.name}: a helper process took work`)
      assert.equal(fs.readdirSync(t), ['immutable'])
      assert.equal(fs.readdirSync(`${t}/immutable`), ['file'])
      assert.is(listing(w.canary), w.canaryBefore)
      assert.ok(fs.existsSync('/etc/passwd') && fs.existsSync('/proc/self'), 'the links to / were not followed')
      sh(`chattr -i '${t}/immutable/file' '${twinOf(t)}/immutable/file'; rm -r '${t}/immutable' '${twinOf(t)}'`)
    }
  } finally {
    sh(`chattr -i '${t}/immutable/file' '${twinOf(t)}/immutable/file' 2>/dev/null || true`)
  }
})

test('seed incident 2: a tmpfs /run with a live socket, a same-fs bind mount and a file bind mount are skipped, reported, intact; by mountinfo and by st_dev/mount id alone', async () => {
  const t = w.tree
  const precious = `${w.scratch.dir}/precious`
  sh(`mkdir -p '${precious}/db'; echo data > '${precious}/db/table'; echo 'nameserver 10.0.0.1' > '${w.scratch.dir}/resolv.conf'`)
  const build = (dir: string): void => {
    sh(`mkdir -p '${dir}/run' '${dir}/srv/data' '${dir}/usr/lib' '${dir}/etc'; echo lib > '${dir}/usr/lib/libc.so'; echo h > '${dir}/etc/hosts'
        echo chroot > '${dir}/etc/resolv.conf'
        mount -t tmpfs hostrun '${dir}/run'; mkdir '${dir}/run/dbus'; echo 1 > '${dir}/run/dbus/pid'
        mount --bind '${precious}' '${dir}/srv/data'; mount --bind '${w.scratch.dir}/resolv.conf' '${dir}/etc/resolv.conf'`)
  }
  const socket = `${t}/run/dbus/system_bus_socket`
  const server = net.createServer((c) => c.end('hello\n'))
  try {
    for (const known of [true, false]) {
      for (const mode of MODES) {
        fs.rmSync(t, { recursive: true, force: true })
        build(t)
        build(twinOf(t))
        await new Promise<void>((resolve) => server.listen(socket, resolve))
        assert.is(fs.statSync(`${t}/srv/data`).dev, fs.statSync(t).dev, 'st_dev alone would walk into srv/data')
        const preciousBefore = listing(precious)
        const runBefore = listing(`${t}/run`)
        const mounts = known ? w.mounts() : new Set<string>()
        const seq = removeTree(twinOf(t), { mountPoints: mounts })
        const { result, helpers } = await parallel(t, mode.opts, mounts)
        const what = `${mode.name}, mount points ${known ? 'known' : 'unknown'}`
        assert.is(result.ok, false)
        assert.equal(outcome(result, t), outcome(seq, twinOf(t)), what)
        assert.is(result.skipped.length + result.errors.length, 3, `${what}: ${JSON.stringify(result)}`)
        assert.ok(helpers.length > 0, `${what}: a helper process took work`)
        assert.is(listing(precious), preciousBefore)
        assert.is(listing(`${t}/run`), runBefore)
        assert.is(fs.readFileSync(`${t}/etc/resolv.conf`, 'utf8'), 'nameserver 10.0.0.1\n')
        for (const m of ['run', 'srv/data', 'etc/resolv.conf']) assert.ok(isMountPoint(`${t}/${m}`), `${m} still mounted`)
        assert.equal(fs.readdirSync(t).sort(), ['etc', 'run', 'srv'], 'everything else is gone')
        const reply = await new Promise<string>((resolve, reject) => {
          let got = ''
          net.connect(socket).on('data', (d) => void (got += d)).on('end', () => resolve(got)).on('error', reject)
        })
        assert.is(reply, 'hello\n', 'the socket still answers')
        await new Promise((resolve) => server.close(resolve))
        sh(`umount -l '${t}/run' '${t}/srv/data' '${t}/etc/resolv.conf' '${twinOf(t)}/run' '${twinOf(t)}/srv/data' '${twinOf(t)}/etc/resolv.conf'; rm -r '${twinOf(t)}'`)
        assert.is(listing(w.canary), w.canaryBefore)
      }
    }
  } finally {
    if (server.listening) await new Promise((resolve) => server.close(resolve))
  }
})

test('a real swap race: another process keeps swapping directories of the tree for symlinks to the canary; nothing outside is touched, the walk ends', async () => {
  const t = w.tree
  const points = 24
  sh(`cd '${t}'; for p in $(seq ${points}); do mkdir -p p$p/victim; echo v > p$p/victim/v; for f in $(seq 20); do echo $f > p$p/f$f; done; done
      for d in $(seq 40); do mkdir -p bulk/d$d; for f in $(seq 40); do echo $f > bulk/d$d/f$f; done; done`)
  const attacker = spawn('python3', ['-c', `
import os, sys, signal, time
t, canary, points = sys.argv[1], sys.argv[2], int(sys.argv[3])
n = 0
def report(*_):
    sys.stdout.write(str(n)); sys.stdout.flush(); os._exit(0)
signal.signal(signal.SIGTERM, report)
while True:
    for p in range(1, points + 1):
        v = f'{t}/p{p}/victim'
        try:
            if os.path.islink(v):
                os.unlink(v); os.mkdir(v)
                with open(f'{v}/v', 'w') as f: f.write('v')
            else:
                os.rename(v, f'{t}/p{p}/gone{n}'); os.symlink(canary, v)
            n += 1
        except OSError:
            pass  # the walk got there first
    time.sleep(0.002)  # churn, but not a flood that the walk would chase for seconds
`, t, w.canary, String(points)], { stdio: ['ignore', 'pipe', 'inherit'] })
  let said = ''
  attacker.stdout.on('data', (d) => (said += d))
  try {
    // The attack is real: the swapped link reaches the canary.
    for (let i = 0; i < 200 && !fs.readdirSync(`${t}/p1`).some((n) => n.startsWith('gone')); i++) await new Promise((r) => setTimeout(r, 10))
    for (const mode of MODES) {
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('the walk did not end within 120 s')), 120_000)))
      const { result } = await Promise.race([parallel(t, mode.opts), timeout]).finally(() => clearTimeout(timer))
      assert.equal(result.skipped, [], mode.name)
      const codes = new Set(result.errors.map((p) => p.code))
      // What the churn itself causes (the sequential walk meets the same): a directory refilled
      // after its rescans (ENOTEMPTY), swapped for a link just before its rmdir (ENOTDIR), or
      // flipping between directory and link more often than the walk retries (ELOOP).
      assert.ok([...codes].every((c) => ['ENOTEMPTY', 'ENOTDIR', 'ELOOP'].includes(c)), `${mode.name}: only the churn's own errors: ${JSON.stringify(result.errors)}`)
      assert.is(listing(w.canary), w.canaryBefore, mode.name)
      fs.mkdirSync(t, { recursive: true })
      sh(`cd '${t}'; for p in $(seq ${points}); do mkdir -p p$p/victim; for f in $(seq 20); do echo $f > p$p/f$f; done; done
          for d in $(seq 40); do mkdir -p bulk/d$d; for f in $(seq 40); do echo $f > bulk/d$d/f$f; done; done`)
    }
  } finally {
    attacker.kill('SIGTERM')
    await new Promise((resolve) => attacker.once('close', resolve))
  }
  assert.ok(Number(said) >= 100, `the attacker swapped ${said} times`)
  assert.ok(fs.existsSync('/etc/passwd'))
  okResult(await removeTreeParallel(t, { mountPoints: w.mounts(), eager: true, workers: 2 }))
  assert.not.ok(fs.existsSync(t))
  assert.is(listing(w.canary), w.canaryBefore)
})

test('refusals are the same as removeTree: nothing touched, no helper started', async () => {
  const d = w.scratch.dir
  const t = w.tree
  sh(`mkdir -p '${t}/a' '${d}/mnt' '${d}/src' '${d}/bound'; echo x > '${t}/a/f'; ln -s tree '${d}/link'
      mount -t tmpfs m '${d}/mnt'; echo y > '${d}/mnt/f'; mount --bind '${d}/src' '${d}/bound'`)
  const before = listing(d)
  const st = fs.statSync(t)
  const cases: [string, Partial<ParallelOptions>][] = [
    ['/', {}], ['tmp/x', {}], [`${t}/`, {}], [`${t}/a/..`, {}], [`${d}//tree`, {}], [`${d}/link`, {}], [`${d}/link/a`, {}],
    [`${d}/mnt`, {}], [`${d}/bound`, {}], [`${d}/bound`, { mountPoints: new Set() }], [t, { expect: { dev: st.dev, ino: st.ino + 1 } }],
  ]
  for (const [root, extra] of cases) {
    let tasks = 0
    let threw: unknown
    try {
      await removeTreeParallel(root, { mountPoints: w.mounts(), eager: true, workers: 2, onTask: () => tasks++, ...extra })
    } catch (err) {
      threw = err
    }
    assert.ok(refused(threw), `refused: ${JSON.stringify(root)} ${String(threw)}`)
    assert.is(tasks, 0)
  }
  assert.is(listing(d), before)
})

test('a small tree is walked by the coordinator alone (no pre-walk, no helper); workers: 1 never forks', async () => {
  const t = w.tree
  sh(`cd '${t}'; mkdir -p a/b c; echo 1 > a/f; echo 2 > a/b/g; echo 3 > c/h`)
  let tasks = 0
  okResult(await removeTreeParallel(t, { mountPoints: w.mounts(), onTask: () => tasks++ }))
  assert.is(tasks, 0)
  fs.mkdirSync(t)
  sh(`cd '${t}'; for d in $(seq 30); do mkdir d$d; for f in $(seq 30); do echo > d$d/f$f; done; done`)
  okResult(await removeTreeParallel(t, { mountPoints: w.mounts(), workers: 1, eager: true, onTask: () => tasks++ }))
  assert.is(tasks, 0)
  assert.not.ok(fs.existsSync(t))
})

test('options.ops (the fault seam) takes the sequential path: the injected fault is reported like removeTree does', async () => {
  const t = w.tree
  sh(`mkdir -p '${t}/a' '${t}/b'; echo > '${t}/a/locked'; echo > '${t}/a/other'; echo > '${t}/b/f'`)
  let tasks = 0
  const ops = wrapOps({
    unlink(fd, name) {
      if (nameIs(name, 'locked')) throw errno('EACCES', 'unlink')
      systemDirOps.unlink(fd, name)
    },
  })
  const r = await removeTreeParallel(t, { mountPoints: w.mounts(), ops, eager: true, workers: 3, onTask: () => tasks++ })
  assert.is(r.ok, false)
  assert.equal(brief(r.errors), [`unlink EACCES ${t}/a/locked`])
  assert.is(tasks, 0, 'no helper: it could not see the injected fault')
  assert.equal(fs.readdirSync(t), ['a'])
})

test('cancellation: an abort while helpers work (and SIGINT/SIGTERM sent to them, as Ctrl-C and systemd do to the group) stops every walker, reports ECANCELED only, leaves no helper and no fd; an aborted signal touches nothing', async () => {
  const t = w.tree
  sh(`cd '${t}'; for d in $(seq 40); do mkdir -p d$d/e; for f in $(seq 40); do echo > d$d/f$f; echo > d$d/e/g$f; done; done`)
  const before = listing(t)
  const r0 = await removeTreeParallel(t, { mountPoints: w.mounts(), eager: true, workers: 2, signal: AbortSignal.abort() })
  assert.equal(brief(r0.errors), [`removeTree ECANCELED ${t}`])
  assert.is(listing(t), before)
  const ac = new AbortController()
  const pids = new Set<number>()
  const fds = openFds()
  const r = await removeTreeParallel(t, {
    mountPoints: w.mounts(),
    eager: true,
    workers: 3,
    splitEveryDirectory: true,
    signal: ac.signal,
    onTask: (task) => {
      if (task.pid === process.pid || pids.has(task.pid)) return
      pids.add(task.pid)
      process.kill(task.pid, 'SIGINT')
      process.kill(task.pid, 'SIGTERM')
      if (pids.size === 2) ac.abort()
    },
  })
  assert.is(r.ok, false)
  assert.equal(brief(r.errors), [`removeTree ECANCELED ${t}`])
  assert.ok(fs.existsSync(t), 'stopped before the end')
  assert.is(pids.size, 2, 'both helpers had work')
  assert.ok([...pids].every((pid) => !alive(pid)), 'every helper is gone')
  assert.is(openFds(), fds)
  assert.is(listing(w.canary), w.canaryBefore)
  okResult(await removeTreeParallel(t, { mountPoints: w.mounts(), eager: true, workers: 2 }))
})

test('a helper killed in the middle is an error in the result, and its work is done again by the others', async () => {
  const t = w.tree
  sh(`cd '${t}'; for d in $(seq 30); do mkdir -p d$d/e; for f in $(seq 30); do echo > d$d/f$f; echo > d$d/e/g$f; done; done`)
  let victim: number | undefined
  const r = await removeTreeParallel(t, {
    mountPoints: w.mounts(),
    eager: true,
    workers: 3,
    splitEveryDirectory: true,
    onTask: (task) => {
      if (victim === undefined && task.pid !== process.pid) {
        victim = task.pid
        process.kill(victim, 'SIGKILL')
      }
    },
  })
  assert.ok(victim !== undefined)
  assert.is(r.ok, false)
  assert.equal(r.errors.map((p) => p.code), ['ECHILD'], JSON.stringify(r.errors))
  assert.match(r.errors[0]!.message, `remove helper ${victim} exited with SIGKILL`)
  assert.equal(r.skipped, [])
  assert.not.ok(fs.existsSync(t), 'the tree is gone all the same')
  assert.is(listing(w.canary), w.canaryBefore)
})

test('a deep chain crosses processes level by level (every directory a task) and is removed completely', async () => {
  const t = w.tree
  makeChain(`${t}/chain`, 150)
  assert.equal(chainDepth(`${t}/chain`), { depth: 150, bottom: true })
  const { result, helpers } = await parallel(t, { workers: 2, eager: true, splitEveryDirectory: true })
  okResult(result)
  assert.is(result.entries, 153)
  assert.ok(helpers.length > 0)
  assert.not.ok(fs.existsSync(t))
})

test('helpers started ahead serve removals one after the other, even one that ended before they were up; close() ends them', async () => {
  const pool = startRemoveHelpers(2)
  const seen = new Set<number>()
  try {
    const t = w.tree
    sh(`cd '${t}'; mkdir -p a/b; echo 1 > a/f`)
    let early = 0
    okResult(await removeTreeParallel(t, { mountPoints: w.mounts(), helpers: pool, onTask: () => early++ }))
    assert.is(early, 0, 'a tiny tree is done before the helpers are up')
    for (let round = 0; round < 3; round++) {
      fs.mkdirSync(t)
      ordinary(t)
      const { result, helpers } = await parallel(t, { helpers: pool, eager: true, splitEveryDirectory: round === 1 })
      okResult(result)
      assert.not.ok(fs.existsSync(t))
      assert.ok(helpers.length > 0, `round ${round}: a helper took work`)
      for (const pid of helpers) seen.add(pid)
    }
    assert.is(seen.size, 2, 'both helpers served, and they were the same two processes throughout')
    assert.ok([...seen].every(alive), 'still up between removals')
  } finally {
    await pool.close()
  }
  assert.ok([...seen].every((pid) => !alive(pid)), 'closed')
  let threw: unknown
  try {
    await removeTreeParallel(w.tree, { mountPoints: w.mounts(), helpers: { close: async () => {} } })
  } catch (err) {
    threw = err
  }
  assert.instance(threw, TypeError)
})

test('join counts: a directory that lent work, had to be listed again (refilled: ENOTEMPTY) and lent again is removed once, and the root last', () => {
  const t = w.tree
  sh(`cd '${t}'; mkdir -p a/x/sub a/y/sub; for f in $(seq 60); do echo > a/x/sub/f$f; echo > a/y/sub/f$f; done`)
  let refilled = false
  const ops = wrapOps({
    rmdir(fd, name) {
      if (nameIs(name, 'a') && !refilled) {
        refilled = true // something appears in a/ after its listing ended: its rmdir says ENOTEMPTY
        sh(`mkdir -p '${t}/a/late/sub'; echo > '${t}/a/late/sub/i'`)
      }
      systemDirOps.rmdir(fd, name)
    },
  })
  preservingCwd(() => {
    const opened = openRoot(t, { mountPoints: w.mounts(), ops })
    if (!('removal' in opened) || opened.top === undefined) throw new Error('the root did not open')
    const { removal, top, parentFd } = opened
    const lent: Task[] = []
    const back: [Task, boolean][] = []
    const walker = new Walker(removal, (task, blocked) => back.push([task, blocked]))
    try {
      walker.start(top)
      walker.work(0) // 32 steps: inside the first of a/x and a/y, the other one not read yet
      lent.push(...walker.donate(1)) // that other one, from a/ (the root has nothing left to lend)
      assert.equal(lent.map((task) => task.path.slice(t.length)), ['/a'])
      assert.match(String(lent[0]!.name), /^[xy]$/)
      walker.work(Infinity) // a/ and the root wait for a/x
      assert.not.ok(walker.busy)
      walker.take(lent.shift()!) // taken back here, through /proc/self/fd
      walker.work(Infinity)
      for (const [task, blocked] of back.splice(0)) walker.joined(task.id, blocked) // a/: ENOTEMPTY, listed again
      assert.ok(refilled && walker.busy)
      lent.push(...walker.donate(1)) // a/late, lent by the second listing of a/
      walker.work(Infinity)
      walker.take(lent.shift()!)
      walker.work(Infinity)
      for (const [task, blocked] of back.splice(0)) walker.joined(task.id, blocked)
      assert.ok(walker.idle, 'nothing is waiting any more')
      okResult(removal.result())
      assert.not.ok(fs.existsSync(t))
    } finally {
      walker.closeAll()
      removal.ops.close(parentFd)
    }
  })
})

test('a pool that is never closed does not keep its process alive, and its helpers go with it', async () => {
  const mod = new URL('../../src/remove-parallel.js', import.meta.url).href
  const script = `const { startRemoveHelpers } = await import(${JSON.stringify(mod)})
    startRemoveHelpers(2)
    setTimeout(() => {
      const mine = fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p)).filter((p) => {
        try { return fs.readFileSync('/proc/' + p + '/stat', 'utf8').split(') ')[1].split(' ')[1] === String(process.pid) } catch { return false }
      })
      process.stdout.write(mine.join(' '))
    }, 1500)`
  const child = spawnSync(process.execPath, [...process.execArgv, '--input-type=module', '-e', `import * as fs from 'node:fs'\n${script}`], { encoding: 'utf8', timeout: 20_000 })
  assert.is(child.status, 0, `it exited by itself: ${child.stderr} ${String(child.error ?? '')}`)
  const helpers = child.stdout.trim().split(' ').filter(Boolean).map(Number)
  assert.is(helpers.length, 2, 'two helpers were running')
  for (let i = 0; i < 100 && helpers.some(alive); i++) await new Promise((r) => setTimeout(r, 50))
  assert.ok(!helpers.some(alive), 'and they are gone')
})

test('a process with nothing else to wait for finishes its removals and closes its pool (helpers hold its event loop only while they work)', () => {
  const t = w.tree
  sh(`cd '${t}'; for d in $(seq 20); do mkdir -p d$d/e; for f in $(seq 20); do echo > d$d/f$f; echo > d$d/e/g$f; done; done; cp -a '${t}' '${t}-2'`)
  const mod = new URL('../../src/remove-parallel.js', import.meta.url).href
  const script = `const { removeTreeParallel, startRemoveHelpers } = await import(${JSON.stringify(mod)})
    const pool = startRemoveHelpers(1)
    const mountPoints = new Set(${JSON.stringify([...w.mounts()])})
    const first = await removeTreeParallel(${JSON.stringify(t)}, { mountPoints, helpers: pool, eager: true })
    await new Promise((r) => setTimeout(r, 300))
    const second = await removeTreeParallel(${JSON.stringify(`${t}-2`)}, { mountPoints, helpers: pool, eager: true })
    await pool.close()
    await startRemoveHelpers(2).close() // still starting: killed, and waited for
    process.stdout.write(JSON.stringify([first.ok, second.ok]))`
  const child = spawnSync(process.execPath, [...process.execArgv, '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 })
  assert.is(child.status, 0, child.stderr)
  assert.is(child.stdout, '[true,true]', 'both removals ran to the end, then the pools closed')
  assert.not.ok(fs.existsSync(t) || fs.existsSync(`${t}-2`))
})

test.run()

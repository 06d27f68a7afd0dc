// lockChroot on real files and real lock holders: a free lock is taken and held by our own
// descriptor only (the flock(1) child is gone), it blocks an outside `flock -n` probe, is freed
// by release() and by SIGKILL of its holder; a flock(1) holder and a POSIX (lockf) holder are both
// seen as busy; a symlink or FIFO in place of the lock file is refused. The lock file's content,
// inode and mode never change.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { assertRootSandbox, scratchTmpfs, type Scratch } from '../helpers/sys.js'
import { lockChroot, type LockAttempt } from '../../src/chroot-lock.js'
import { CleanerError } from '../../src/errors.js'
import { systemIo, withIo } from '../../src/io.js'

assertRootSandbox()

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** `flock -n -E 75 FILE true` from outside: 75 when someone holds the flock, 0 when free. */
const probe = (file: string): number | null => spawnSync('flock', ['-n', '-E', '75', file, 'true']).status

/** Every pid that has `file` open, from /proc/PID/fd. */
function openers(file: string): number[] {
  const pids: number[] = []
  for (const pid of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let fds: string[] = []
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`)
    } catch {
      continue // gone, or a kernel thread
    }
    for (const fd of fds) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === file) pids.push(Number(pid))
      } catch {
        // closed meanwhile
      }
    }
  }
  return [...new Set(pids)]
}

/** Content, inode, mode, size and mtime: equal before and after means the file was not touched. */
function fingerprint(file: string): string {
  const st = fs.lstatSync(file)
  return `${st.ino} ${st.mode.toString(8)} ${st.size} ${st.mtimeMs} ${fs.readFileSync(file, 'utf8')}`
}

/** Starts a helper and waits for it to print `ready` on stdout. */
async function startHelper(helpers: ChildProcess[], file: string, args: string[], ready: string): Promise<ChildProcess> {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'inherit'] })
  helpers.push(child)
  let out = ''
  child.stdout!.on('data', (d: Buffer) => void (out += d.toString()))
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(20)) {
    if (out.includes(ready)) return child
    if (child.exitCode !== null) break
  }
  throw new Error(`${file} ${args.join(' ')} did not print ${ready}: ${out}`)
}

let scratch: Scratch
let helpers: ChildProcess[]
let lockFile: string
test.before.each(() => {
  scratch = scratchTmpfs('bc-lock-')
  helpers = []
  lockFile = `${scratch.dir}/extra-x86_64/user.lock`
  fs.mkdirSync(`${scratch.dir}/extra-x86_64`)
  fs.writeFileSync(lockFile, 'devtools was here\n', { mode: 0o644 })
})
test.after.each(() => {
  for (const h of helpers) if (h.exitCode === null && h.signalCode === null) h.kill('SIGKILL')
  scratch.cleanup()
})

const held = (a: LockAttempt) => {
  if (!('held' in a)) throw new Error(`expected to hold the lock, got busy: ${a.reason}`)
  return a.held
}

test('a free lock is taken and held by our descriptor alone; release() frees it', async () => {
  const before = fingerprint(lockFile)
  assert.is(probe(lockFile), 0, 'free before')
  const lock = held(await lockChroot(systemIo, lockFile))
  try {
    assert.is(lock.path, lockFile)
    assert.equal(openers(lockFile), [process.pid], 'no helper process holds the file open: the flock child is gone')
    assert.is(probe(lockFile), 75, 'an outside flock probe sees it held')
    const again = await lockChroot(systemIo, lockFile)
    assert.ok('busy' in again, 'a second attempt (another open file description) is busy')
  } finally {
    lock.release()
  }
  assert.is(probe(lockFile), 0, 'free after release()')
  lock.release() // idempotent
  assert.is(fingerprint(lockFile), before, 'lock file untouched')
})

test('a missing lock file is created 0644 (as devtools would), then locked', async () => {
  const fresh = `${scratch.dir}/extra-x86_64/new.lock`
  const oldMask = process.umask(0o077) // would make 0600 without the explicit mode
  let lock
  try {
    lock = held(await lockChroot(systemIo, fresh))
  } finally {
    process.umask(oldMask)
  }
  try {
    const st = fs.lstatSync(fresh)
    assert.ok(st.isFile())
    assert.is(st.mode & 0o7777, 0o644)
    assert.is(st.size, 0)
    assert.is(probe(fresh), 75)
  } finally {
    lock.release()
  }
})

test('held by a background `flock FILE sleep 60`: busy, naming the holder', async () => {
  const before = fingerprint(lockFile)
  const holder = await startHelper(helpers, 'flock', [lockFile, 'sh', '-c', 'echo ready; exec sleep 60'], 'ready')
  const a = await lockChroot(systemIo, lockFile)
  if (!('busy' in a)) throw new Error('expected busy')
  assert.ok(a.holders.some((h) => h.pid === holder.pid && (h.command === 'flock' || h.command === 'sleep')), JSON.stringify(a.holders))
  assert.match(a.reason, new RegExp(`^locked by pid ${holder.pid} \\((flock|sleep)\\)`))
  assert.equal(openers(lockFile).includes(process.pid), false, 'we closed our descriptor')
  holder.kill('SIGKILL')
  await sleep(100)
  // flock(1)'s child (sleep) inherited the descriptor: the lock outlives the killed flock pid.
  assert.is(probe(lockFile), 75, 'still held by the orphaned sleep')
  assert.is(fingerprint(lockFile), before)
})

test('held by a POSIX lock (python3 lockf): flock(2) does not see it, /proc/locks does: busy', async () => {
  const before = fingerprint(lockFile)
  const py = 'import fcntl,sys,time\nf=open(sys.argv[1],"r+")\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint("ready",flush=True)\ntime.sleep(60)'
  const holder = await startHelper(helpers, 'python3', ['-c', py, lockFile], 'ready')
  assert.is(probe(lockFile), 0, 'an flock probe cannot see a POSIX lock')
  const a = await lockChroot(systemIo, lockFile)
  if (!('busy' in a)) throw new Error('expected busy')
  assert.ok(a.holders.some((h) => h.pid === holder.pid && h.kind === 'POSIX'), JSON.stringify(a.holders))
  assert.match(a.reason, `pid ${holder.pid}`)
  assert.is(probe(lockFile), 0, 'the flock we took on the way was dropped again')
  assert.is(fingerprint(lockFile), before)
})

test('the lock dies with its process: SIGKILL of a node holding it frees it', async () => {
  const before = fingerprint(lockFile)
  // Import the module under test the way this test runs: TypeScript through tsx, or compiled.
  const underTsx = import.meta.url.endsWith('.ts')
  const moduleUrl = new URL(`../../src/chroot-lock.${underTsx ? 'ts' : 'js'}`, import.meta.url).href
  const ioUrl = new URL(`../../src/io.${underTsx ? 'ts' : 'js'}`, import.meta.url).href
  const script = `${scratch.dir}/holder.mjs`
  fs.writeFileSync(
    script,
    [
      `const { lockChroot } = await import(${JSON.stringify(moduleUrl)})`,
      `const { systemIo } = await import(${JSON.stringify(ioUrl)})`,
      `const a = await lockChroot(systemIo, process.argv[2])`,
      `console.log('held' in a ? 'locked' : 'busy: ' + a.reason)`,
      `setInterval(() => {}, 1000)`,
    ].join('\n'),
  )
  const holder = await startHelper(helpers, process.execPath, [...(underTsx ? ['--import', 'tsx'] : []), script, lockFile], 'locked')
  assert.is(probe(lockFile), 75, 'held by the child node')
  assert.equal(openers(lockFile), [holder.pid], 'only the node child has it open')
  holder.kill('SIGKILL')
  await new Promise((resolve) => holder.once('exit', resolve))
  assert.is(probe(lockFile), 0, 'free once its holder is dead')
  assert.is(fingerprint(lockFile), before)
})

test('a symlink in place of the lock file is refused; its target is untouched', async () => {
  const target = `${scratch.dir}/host-file`
  fs.writeFileSync(target, 'precious\n')
  const before = fingerprint(target)
  const link = `${scratch.dir}/extra-x86_64/evil.lock`
  fs.symlinkSync(target, link)
  try {
    await lockChroot(systemIo, link)
    assert.unreachable('should refuse')
  } catch (err) {
    assert.instance(err, CleanerError)
    assert.is((err as CleanerError).code, 'EREFUSED')
    assert.is((err as CleanerError).path, link)
  }
  assert.is(fingerprint(target), before, 'target untouched')
  assert.is(probe(target), 0, 'target not locked')
  assert.is(fs.readlinkSync(link), target, 'symlink untouched')
  // A dangling symlink must not make us create its target either.
  const dangling = `${scratch.dir}/extra-x86_64/dangling.lock`
  fs.symlinkSync(`${scratch.dir}/nowhere`, dangling)
  try {
    await lockChroot(systemIo, dangling)
    assert.unreachable('should refuse')
  } catch (err) {
    assert.is((err as CleanerError).code, 'EREFUSED')
  }
  assert.not.ok(fs.existsSync(`${scratch.dir}/nowhere`), 'symlink target not created')
})

test('a FIFO or a directory in place of the lock file is refused without hanging', async () => {
  const fifo = `${scratch.dir}/extra-x86_64/fifo.lock`
  spawnSync('mkfifo', [fifo])
  const dir = `${scratch.dir}/extra-x86_64/dir.lock`
  fs.mkdirSync(dir)
  for (const p of [fifo, dir]) {
    try {
      await lockChroot(systemIo, p)
      assert.unreachable('should refuse')
    } catch (err) {
      assert.is((err as CleanerError).code, 'EREFUSED', String(err))
    }
  }
  assert.ok(fs.lstatSync(fifo).isFIFO())
})

test('flock(1) missing or failing: an error naming the path, and the descriptor closed', async () => {
  const before = fingerprint(lockFile)
  const closed: number[] = []
  for (const run of [
    async () => ({ exitCode: -1, stdout: '', stderr: '', failure: 'Command failed with ENOENT: flock -n -E 75 3' }),
    async () => ({ exitCode: 64, stdout: '', stderr: 'flock: bad file descriptor' }),
  ]) {
    const io = withIo(systemIo, { run, close: (fd) => void (closed.push(fd), systemIo.close(fd)) })
    try {
      await lockChroot(io, lockFile)
      assert.unreachable('should throw')
    } catch (err) {
      assert.instance(err, CleanerError)
      assert.is((err as CleanerError).code, 'ESYS')
      assert.is((err as CleanerError).path, lockFile)
    }
  }
  assert.is(closed.length, 2, 'each attempt closed its descriptor')
  assert.equal(openers(lockFile), [])
  assert.is(fingerprint(lockFile), before)
})

test.run()

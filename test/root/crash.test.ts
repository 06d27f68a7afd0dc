/**
 * Crash safety (issue 6, case 6): `kill -9` needs no cooperation from the process, so whatever
 * the cleaner holds must be released by the kernel alone and whatever it half did must be
 * finished by the next run. The locks are flock(2) locks on descriptors of our own (no helper
 * process holds them), mount teardown is repeatable (private, then lazy unmount), and the walk
 * works on whatever is left. So: SIGKILL a purge at seeded random points after it took its run
 * lock (uniform over the time an unkilled purge of the same copy takes, measured first), then check that no lock is held, no helper lingers, a re-run finishes the job, and
 * devtools could recreate the copy (its group directory and lock file are intact).
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { assertRootSandbox, listing, mountPointsBelow } from '../helpers/sys.js'
import { runCliSync, startCli } from '../helpers/cli.js'
import { flockStatus, leakMount, locksOn, makeCopy, makeWorld, processes, sleep, until, type ProcInfo } from '../helpers/build-root.js'
import { prng as random } from '../helpers/random.js'

assertRootSandbox()

const SEED = 0x5eedc0de
const RUNS = 15


/** Field 22 of /proc/PID/stat: with the pid, it names one process (pids are reused). */
function startTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(') ') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

function countFiles(dir: string): number {
  let n = 0
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(`${d}/${e.name}`)
      else n++
    }
  }
  if (fs.existsSync(dir)) walk(dir)
  return n
}

test(`kill -9 at ${RUNS} seeded random points of a purge (seed 0x${SEED.toString(16)}): no lock held, no helper left, a re-run finishes, the group and lock file stay`, async () => {
  const w = makeWorld('bc-crash-')
  const rand = random(SEED)
  const phases = new Map<string, number>()
  try {
    fs.writeFileSync(w.runLock, '')
    const copy = `${w.group}/copy`
    const lock = `${copy}.lock`
    const makeVictim = () => {
      makeCopy(copy, { files: 3000, perDir: 500 })
      leakMount(`${copy}/tmp`)
      leakMount(`${copy}/tmp/inner`)
    }
    const purge = () => startCli(['purge', '--json', '--build-root', w.buildRoot, '--run-lock', w.runLock, copy])
    // Calibration: how long a purge of this copy runs once it holds the run lock.
    makeVictim()
    const timed = purge()
    await until('the run lock to be taken', () => locksOn(w.runLock).length > 0, 30_000, 1)
    const t0 = Date.now()
    assert.is((await timed.done).status, 0)
    const span = Date.now() - t0
    for (let run = 1; run <= RUNS; run++) {
      const delay = Math.floor(rand() * span)
      const where = `run ${run} (seed 0x${SEED.toString(16)}, SIGKILL ${delay} of ${span} ms after the run lock)`
      makeVictim()
      const files = countFiles(`${copy}/build`)
      const cli = purge()
      let exited = false
      void cli.done.then(() => void (exited = true))
      await until(`${where}: the run lock to be taken`, () => exited || locksOn(w.runLock).length > 0, 30_000, 1)
      await sleep(delay)
      // Its helpers (flock, mount, umount) at the moment of the kill, by pid and start time.
      const helpers: (ProcInfo & { start: string | undefined })[] = processes()
        .filter((p) => p.ppid === cli.pid)
        .map((p) => ({ ...p, start: startTime(p.pid) }))
      cli.child.kill('SIGKILL')
      const r = await cli.done
      assert.ok(r.signal === 'SIGKILL' || r.status === 0, `${where}: ${r.status} ${r.signal}\n${r.stderr}`)

      const phase = !fs.existsSync(copy)
        ? 'copy gone'
        : countFiles(`${copy}/build`) < files
          ? 'killed mid-walk'
          : mountPointsBelow(copy).length < 2
            ? 'killed during or after the unmounts, before the walk'
            : 'killed before the teardown'
      phases.set(phase, (phases.get(phase) ?? 0) + 1)

      const lingering = () => [
        ...helpers.filter((h) => h.start !== undefined && startTime(h.pid) === h.start),
        ...processes().filter((p) => p.pid !== process.pid && (p.cmdline.includes(w.dir) || p.cmdline.includes(`/proc/${cli.pid}/`))),
      ]
      // A helper that was running finishes on its own (umount -l takes microseconds): bounded wait.
      await until(`${where}: its helpers to be gone: ${JSON.stringify(lingering())}`, () => lingering().length === 0, 5000, 20)
      for (const file of [lock, w.runLock]) {
        assert.equal(locksOn(file), [], `${where}: ${file} still in /proc/locks`)
        assert.is(flockStatus(file), 0, `${where}: ${file} still locked`)
      }
      assert.ok(fs.statSync(w.group).isDirectory(), `${where}: the group dir is intact`)
      assert.ok(fs.lstatSync(lock).isFile(), `${where}: the lock file is intact (devtools could recreate the copy)`)

      const again = runCliSync(['purge', '--json', '--build-root', w.buildRoot, '--run-lock', w.runLock, copy])
      if (phase === 'copy gone') {
        // The killed run had finished the job: naming a chroot that is not there is bad input.
        assert.is(again.status, 2, `${where}: ${again.stderr}`)
        assert.match(again.stderr, `${copy} does not exist`)
      } else {
        assert.is(again.status, 0, `${where} (${phase}): the re-run finishes the job\n${again.stderr}`)
      }
      assert.not.ok(fs.existsSync(copy), `${where}: the copy is gone`)
      assert.equal(mountPointsBelow(w.buildRoot), [], `${where}: every leaked mount detached`)
      assert.ok(fs.lstatSync(lock).isFile(), `${where}: the lock file stays after the re-run`)
      assert.equal(locksOn(lock), [])
      assert.is(listing(w.canary), w.canaryBefore, where)
    }
    console.log(`  crash: a purge runs ${span} ms after taking its run lock; killed: ${[...phases].map(([p, n]) => `${n} × ${p}`).join(', ')}`)
    assert.ok(phases.size >= 2, `precondition: the kills landed at different points of the purge: ${[...phases.keys()].join(', ')}`)
  } finally {
    w.cleanup()
  }
})

test.run()

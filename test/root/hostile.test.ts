/**
 * Hostile input and faults (issue 6): chroot contents are written by untrusted builds and the
 * tool runs unattended as root, so nothing outside a chroot may ever be lost. Each case puts a
 * canary outside the chroot, on the SAME filesystem (st_dev alone would not protect it), and
 * asserts it intact:
 *   - purge PATH arguments in the manner of coreutils' rm r-root tests: refused, nothing touched;
 *   - the swap race for real: a process swaps a directory of the copy for a symlink to the canary
 *     while purge walks it;
 *   - a mount appearing after the teardown was verified (through the remover's seam);
 *   - faults through the seams (EPERM, EROFS, EIO, vanishing entries, btrfs missing,
 *     /proc/locks unreadable) and a build root on a read-only filesystem.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { spawn, execFileSync, spawnSync } from 'node:child_process'
import { assertRootSandbox, isMountPoint, listing, mountPointsBelow, scratchTmpfs, sh } from '../helpers/sys.js'
import { errno, fdPath, nameIs, wrapOps } from '../helpers/remove-tree.js'
import { runCliMany, runCliSync } from '../helpers/cli.js'
import {
  age,
  entryOf,
  leakMount,
  locksText,
  makeCopy,
  makeFiles,
  makeWorld,
  mountinfoText,
  parseReport,
  realRunOptions,
  until,
  type World,
} from '../helpers/build-root.js'
import { systemDirOps, type DirOps } from '../../src/dir-ops.js'
import { systemIo, withIo, type Io } from '../../src/io.js'
import { recordingLogger } from '../../src/logger.js'
import { CleanerError, isInputError } from '../../src/errors.js'
import { resolvePurgeTarget } from '../../src/purge-target.js'
import { runClean } from '../../src/run.js'
import type { RunOptions } from '../../src/options.js'

assertRootSandbox()

const options = (w: World, buildRoots = [w.buildRoot]): RunOptions => realRunOptions(buildRoots, w.runLock)

/** runClean in-process with a seam replaced; the JSON report, exit code and log. */
async function cleanWith(w: World, seams: { io?: Io; dirOps?: DirOps }, buildRoots?: string[]) {
  let out = ''
  const log = recordingLogger()
  const code = await runClean(options(w, buildRoots), { io: seams.io ?? systemIo, log, stdout: (t) => void (out += t), ...(seams.dirOps ? { dirOps: seams.dirOps } : {}) })
  return { code, report: parseReport(out, log.lines.join('\n')), log }
}

// ------------------------------------------------------------------------- 1. path arguments

test('purge PATH arguments like coreutils rm r-root tests: each refused with exit 2 and the reason; nothing touched', async () => {
  const w = makeWorld('bc-hostile-')
  try {
    const { dir, buildRoot, group } = w
    const stale = makeCopy(`${group}/stale`)
    leakMount(`${stale}/tmp`)
    age(stale, 30)
    fs.writeFileSync(`${group}/afile`, 'not a chroot\n')
    makeCopy(`${group}/bad\nname`)
    fs.symlinkSync('/', `${dir}/rootlink`)
    fs.symlinkSync('/', `${group}/rootlink`)
    fs.symlinkSync(w.canary, `${group}/canarylink`)
    fs.symlinkSync(group, `${buildRoot}/grouplink`)
    fs.symlinkSync(buildRoot, `${dir}/brlink`)
    const before = { tree: listing(dir), mounts: mountinfoText(), locks: locksText() }

    const root = /it is the root directory/
    const dotdot = /it contains '\.\.': name the chroot or group directly/
    const dot = /it ends in '\.': name the chroot or group directly/
    const outside = /it is not inside a build root/
    const symlink = /is a symlink; it is never followed/
    const isBuildRoot = /it is a build root; name a group or a chroot inside it/
    const cases: [string, RegExp, string?][] = [
      ['/', root],
      ['//', root],
      ['///', root],
      ['/./', dot],
      ['/../', dotdot],
      ['/etc/..', dotdot],
      [`${dir}/rootlink`, outside],
      [`${dir}/rootlink/`, outside],
      [`${dir}/rootlink/..`, dotdot],
      [`${group}/rootlink`, symlink],
      [`${group}/rootlink/`, symlink],
      [`${group}/rootlink/.`, dot],
      [`${group}/canarylink`, symlink],
      [`${group}/canarylink/sub`, symlink],
      [`${group}/canarylink/sub/deep.txt`, symlink],
      [`${buildRoot}/grouplink`, symlink],
      [`${buildRoot}/grouplink/stale`, symlink],
      [`${dir}/brlink/extra-x86_64/stale`, outside],
      [buildRoot, isBuildRoot],
      [`${buildRoot}/`, isBuildRoot],
      [`${buildRoot}//`, isBuildRoot],
      [`${buildRoot}/.`, dot],
      [`${group}/../..`, dotdot],
      [`${group}/stale/../../../canary`, dotdot],
      [`${group}/stale/build/../..`, dotdot],
      [w.canary, outside],
      [`${group}/afile`, /afile is not a directory/],
      [`${group}/missing`, /missing does not exist/],
      [`${group}/bad\nname`, /it contains a control character/],
      [`${group}/stale\t`, /it contains a control character/],
      [`${group}/stale/build`, /it lies inside a chroot; name the chroot or its group/],
      ['', /an empty path/],
      // relative, resolved from the working directory
      ['.', dot, buildRoot],
      ['./', dot, buildRoot],
      ['..', dotdot, buildRoot],
      ['extra-x86_64/..', dotdot, buildRoot],
      ['.', dot, group],
      ['..', dotdot, group],
      ['../extra-x86_64/stale', dotdot, group],
      ['.', dot, stale],
      ['archbuild', isBuildRoot, dir],
      ['canary', outside, dir],
      ['rootlink', outside, dir],
    ]
    // Every case in-process (cheap), as the purge resolves it before anything is touched…
    const here = process.cwd()
    for (const [p, why, cwd] of cases) {
      const name = `${JSON.stringify(p)}${cwd ? ` from ${cwd}` : ''}`
      try {
        process.chdir(cwd ?? here)
        resolvePurgeTarget(systemIo, p, [buildRoot])
        assert.unreachable(`${name} was accepted`)
      } catch (err) {
        assert.instance(err, CleanerError, `${name}: ${String(err)}`)
        assert.ok(isInputError(err), `${name}: an input error (exit 2), not ${(err as CleanerError).code}`)
        assert.match((err as Error).message, `refusing to purge ${JSON.stringify(p)}: `, name)
        assert.match((err as Error).message, why, name)
      } finally {
        process.chdir(here)
      }
    }
    // …and every other one through the CLI: exit 2, the message on stderr, nothing on stdout.
    const viaCli = cases.filter((_, i) => i % 2 === 0 || cases[i]![2] !== undefined)
    const results = await runCliMany(
      viaCli.map(([p, , cwd]) => ({ args: ['purge', '--build-root', buildRoot, '--run-lock', w.runLock, p], opts: cwd ? { cwd } : {} })),
    )
    results.forEach((r, i) => {
      const [p, why, cwd] = viaCli[i]!
      const name = `${JSON.stringify(p)}${cwd ? ` from ${cwd}` : ''}`
      assert.is(r.status, 2, `${name}: ${r.stderr}`)
      assert.match(r.stderr, `build-cleaner: error: refusing to purge ${JSON.stringify(p)}: `, name)
      assert.match(r.stderr, why, name)
      assert.is(r.stdout, '', name)
    })
    assert.is(listing(dir), before.tree, 'nothing touched (no run lock either)')
    assert.is(mountinfoText(), before.mounts, 'the leaked mount in the stale copy is still there')
    assert.is(locksText(), before.locks)

    // The documented acceptance: a relative path that resolves to a chroot or group inside.
    const ok = await runCliMany([
      { args: ['purge', '--dry-run', '--json', '--build-root', buildRoot, 'extra-x86_64/stale'], opts: { cwd: buildRoot } },
      { args: ['purge', '--dry-run', '--json', '--build-root', buildRoot, './stale'], opts: { cwd: group } },
      { args: ['purge', '--dry-run', '--json', '--build-root', buildRoot, 'extra-x86_64'], opts: { cwd: buildRoot } },
    ])
    assert.is(ok[0]!.status, 0, ok[0]!.stderr)
    assert.is(entryOf(parseReport(ok[0]!.stdout), stale).action, 'remove')
    assert.is(ok[1]!.status, 0, ok[1]!.stderr)
    assert.is(entryOf(parseReport(ok[1]!.stdout), stale).action, 'remove')
    assert.is(ok[2]!.status, 0, ok[2]!.stderr)
    assert.is(entryOf(parseReport(ok[2]!.stdout), group).kind, 'group')
    assert.is(listing(dir), before.tree)
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

// ------------------------------------------------------------------------- 2. the swap race

// Swaps each <copy>/swapN for a symlink to the canary and back, as fast as it can, until the copy
// is gone, the stop file appears or the deadline. `hits`: our symlink was gone when we went to
// remove it, so the walker met the symlink where the directory had been (and unlinked it
// rather than following it).
const SWAPPER = `
import os, sys, time
copy, canary, park, deadline, ready, stop, n = sys.argv[1:]
names = ['swap%d' % i for i in range(int(n))]
end = time.monotonic() + float(deadline)
swaps = hits = 0
open(ready, 'w').close()
while time.monotonic() < end and os.path.lexists(copy) and not os.path.exists(stop):
    for name in names:
        d, away = copy + '/' + name, park + '/' + name
        try:
            os.rename(d, away)
        except OSError:
            pass
        try:
            os.symlink(canary, d)
        except FileExistsError:
            pass
        except OSError:
            break
        swaps += 1
        for _ in range(4):  # keep the symlink in place a little longer: more chances for the walker to meet it
            try:
                os.lstat(d)
            except OSError:
                pass
        try:
            os.unlink(d)
        except FileNotFoundError:
            hits += 1
        except OSError:
            pass
        if os.path.lexists(away):
            try:
                os.rename(away, d)
            except OSError:
                pass
print(swaps, hits)
`

const SWAPPED = 4

test('the swap race for real: directories of the copy are swapped for a symlink to the canary while purge walks; the canary survives every run', async () => {
  const w = makeWorld('bc-hostile-')
  try {
    const script = `${w.dir}/swapper.py`
    fs.writeFileSync(script, SWAPPER)
    const copy = `${w.group}/racy`
    const park = `${w.dir}/parked`
    const ready = `${w.dir}/ready`
    const stop = `${w.dir}/stop`
    const runs: { status: number | null; swaps: number; hits: number; outcome: string; error?: string }[] = []
    const started = Date.now()
    while (runs.length < 30 && (runs.length < 10 || Date.now() - started < 30_000)) {
      makeCopy(copy, { files: 2500 })
      makeFiles(`${copy}/zz`, 2500)
      for (let k = 0; k < SWAPPED; k++) makeFiles(`${copy}/swap${k}`, 100, 50)
      age(copy, 30)
      fs.rmSync(ready, { force: true })
      fs.rmSync(stop, { force: true })
      fs.mkdirSync(park, { recursive: true })
      const swapper = spawn('python3', [script, copy, w.canary, park, '8', ready, stop, String(SWAPPED)], { stdio: ['ignore', 'pipe', 'inherit'] })
      let said = ''
      swapper.stdout.setEncoding('utf8').on('data', (d: string) => void (said += d))
      const swapperDone = new Promise<void>((resolve) => swapper.once('close', () => resolve()))
      await until('the swapper to start', () => fs.existsSync(ready))
      const r = await runCliMany([{ args: ['purge', '--json', '--build-root', w.buildRoot, '--run-lock', w.runLock, copy] }], 1).then((x) => x[0]!)
      fs.writeFileSync(stop, '') // it stops by itself once the copy is gone; bounded anyway
      await swapperDone
      const [swaps = 0, hits = 0] = said.trim().split(' ').map(Number)
      const entry = r.stdout ? entryOf(parseReport(r.stdout, r.stderr), copy) : undefined
      runs.push({ status: r.status, swaps, hits, outcome: entry?.outcome ?? `no report (${r.status})`, ...(entry?.error ? { error: entry.error } : {}) })
      assert.is(listing(w.canary), w.canaryBefore, `run ${runs.length}: canary intact (${JSON.stringify(runs.at(-1))})\n${r.stderr}`)
      assert.ok(r.status === 0 || r.status === 1, `run ${runs.length}: a result, not a crash: ${r.status}\n${r.stderr}`)
      assert.not.match(r.stderr, /internal error/)
      fs.rmSync(copy, { recursive: true, force: true })
      fs.rmSync(park, { recursive: true, force: true })
    }
    // The walk met a symlink where a directory had been: it unlinked our symlink (hits), or it
    // failed safely on it (rmdir ENOTDIR after emptying the real directory through its fd;
    // ELOOP after the entry kept flipping).
    const raced = runs.filter((r) => r.hits > 0 || /ENOTDIR|ELOOP/.test(r.error ?? '')).length
    const removed = runs.filter((r) => r.outcome === 'removed').length
    const errors = [...new Set(runs.flatMap((r) => (r.error ? [r.error.replace(/\/tmp\/[^']*/g, '…')] : [])))]
    console.log(`  swap race: ${runs.length} runs, ${raced} in which the walk met a symlink (${runs.filter((r) => r.hits > 0).length} unlinked it), ${removed} removed, ${runs.length - removed} failed safely; ${runs.reduce((n, r) => n + r.swaps, 0)} swaps${errors.length ? `; failures: ${errors.join(' | ')}` : ''}`)
    assert.ok(runs.every((r) => r.swaps > 0), 'precondition: the swapper ran in every run')
    assert.ok(raced > 0, `precondition: the walk met the swapped symlink in at least one run (${JSON.stringify(runs)})`)
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

// ------------------------------------------------------------------------- 3. a mount appears mid-run

/**
 * Ops that, at the first directory the walk opens inside `copy`, mount something on a
 * subdirectory of it (`<dir>/inner`): the walk reaches it later, after the teardown verified
 * that nothing was mounted below the copy.
 */
function mountingOps(copy: string, mount: (target: string) => void): { ops: DirOps; fired: () => string | undefined } {
  let target: string | undefined
  const ops = wrapOps({
    openDir(dirFd, name) {
      if (target === undefined && dirFd !== undefined && fdPath(dirFd) === copy && fs.existsSync(`${copy}/${String(name)}/inner`)) {
        target = `${copy}/${String(name)}/inner`
        mount(target)
      }
      return systemDirOps.openDir(dirFd, name)
    },
  })
  return { ops, fired: () => target }
}

function copyWithInners(copy: string): void {
  makeCopy(copy)
  for (const d of ['build', 'startdir', 'tmp']) {
    fs.mkdirSync(`${copy}/${d}/inner`)
    fs.writeFileSync(`${copy}/${d}/inner/own-file`, 'the chroot\'s own\n')
  }
  age(copy, 30)
}

test('a tmpfs mounted inside the copy after the teardown was verified: the walk stops at it, the copy fails naming it, the mounted data survives; the other copy is removed', async () => {
  const w = makeWorld('bc-hostile-')
  try {
    const copy = `${w.group}/victim`
    copyWithInners(copy)
    const other = makeCopy(`${w.group}/other`)
    const { ops, fired } = mountingOps(copy, (target) => sh(`mount -t tmpfs appeared '${target}' && echo mounted-data > '${target}/data'`))
    const r = await cleanWith(w, { dirOps: ops })
    const target = fired()
    assert.ok(target, 'precondition: the mount appeared during the walk')
    assert.is(r.code, 1)
    const e = entryOf(r.report, copy)
    assert.is(e.outcome, 'failed')
    assert.match(e.error ?? '', `skipping '${target}', since it's on a different device`)
    assert.ok(isMountPoint(target!), 'still mounted')
    assert.is(fs.readFileSync(`${target}/data`, 'utf8'), 'mounted-data\n', 'the mounted data survives')
    assert.is(entryOf(r.report, other).outcome, 'removed')
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test('a same-filesystem bind mount made inside the copy after the teardown was verified: the walk stops at it (mount id), the bound data survives', async () => {
  const w = makeWorld('bc-hostile-')
  try {
    const copy = `${w.group}/victim`
    copyWithInners(copy)
    const other = makeCopy(`${w.group}/other`)
    const precious = `${w.dir}/precious`
    makeFiles(precious, 50, 10)
    fs.writeFileSync(`${precious}/top`, 'top\n')
    const preciousBefore = listing(precious)
    const { ops, fired } = mountingOps(copy, (target) => sh(`mount --bind '${precious}' '${target}'`))
    const r = await cleanWith(w, { dirOps: ops })
    const target = fired()
    assert.ok(target, 'precondition: the bind mount appeared during the walk')
    assert.is(fs.statSync(target!).dev, fs.statSync(copy).dev, 'precondition: same st_dev as the copy (rm --one-file-system would walk in)')
    assert.is(r.code, 1)
    const e = entryOf(r.report, copy)
    assert.is(e.outcome, 'failed')
    assert.match(e.error ?? '', `skipping '${target}', since it's a mount point`)
    assert.is(listing(precious), preciousBefore, 'the bound directory is intact')
    assert.is(entryOf(r.report, other).outcome, 'removed')
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

// ------------------------------------------------------------------------- 4. faults through the seams

test('EPERM, EROFS and EIO from the remover: each copy fails naming path, syscall and code; the clean copy is removed; exit 1', async () => {
  const w = makeWorld('bc-hostile-')
  try {
    const [eperm, erofs, eio, ok] = ['c-eperm', 'c-erofs', 'c-eio', 'c-ok'].map((n) => {
      const c = makeCopy(`${w.group}/${n}`)
      fs.mkdirSync(`${c}/build/target-dir`)
      fs.writeFileSync(`${c}/build/target-dir/f`, '')
      fs.writeFileSync(`${c}/build/target`, '')
      age(c, 30)
      return c
    }) as [string, string, string, string]
    const inCopy = (fd: number, copy: string) => fdPath(fd).startsWith(copy + '/')
    const ops = wrapOps({
      unlink(dirFd, name) {
        if (nameIs(name, 'target') && inCopy(dirFd, eperm)) throw errno('EPERM', 'unlink')
        return systemDirOps.unlink(dirFd, name)
      },
      rmdir(dirFd, name) {
        if (nameIs(name, 'target-dir') && inCopy(dirFd, erofs)) throw errno('EROFS', 'rmdir')
        return systemDirOps.rmdir(dirFd, name)
      },
      openDir(dirFd, name) {
        if (dirFd !== undefined && nameIs(name, 'target-dir') && inCopy(dirFd, eio)) throw errno('EIO', 'open')
        return systemDirOps.openDir(dirFd, name)
      },
      list(dirFd) {
        if (fdPath(dirFd) === `${eio}/startdir`) throw errno('EIO', 'opendir')
        return systemDirOps.list(dirFd)
      },
    })
    const r = await cleanWith(w, { dirOps: ops })
    assert.is(r.code, 1)
    const error = (c: string) => {
      const e = entryOf(r.report, c)
      assert.is(e.outcome, 'failed', c)
      return e.error ?? ''
    }
    assert.match(error(eperm), `unlink '${eperm}/build/target': EPERM`)
    assert.match(error(erofs), `rmdir '${erofs}/build/target-dir': EROFS`)
    assert.match(error(eio), `open '${eio}/build/target-dir': EIO`)
    assert.match(error(eio), `opendir '${eio}/startdir': EIO`)
    for (const [c, left] of [[eperm, 'build/target'], [erofs, 'build/target-dir'], [eio, 'build/target-dir/f']] as const) {
      assert.ok(fs.existsSync(`${c}/${left}`), `${c}: the entry that failed is still there`)
    }
    assert.is(entryOf(r.report, ok).outcome, 'removed')
    assert.not.ok(fs.existsSync(ok))
    assert.ok(r.log.lines.some((l) => l.startsWith(`error: ${eio}: failed: partially removed`)), r.log.lines.join('\n'))
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test('ENOENT: entries vanishing mid-walk (siblings deleted from the hook) are no failure; the copy is removed; exit 0', async () => {
  const w = makeWorld('bc-hostile-')
  try {
    const copy = makeCopy(`${w.group}/vanishing`, { files: 40, perDir: 20 })
    fs.mkdirSync(`${copy}/build/d0/subdir`)
    fs.writeFileSync(`${copy}/build/d0/subdir/x`, '')
    age(copy, 30)
    let deleted = false
    let vanished = 0
    const counting = <A extends unknown[], R>(f: (...a: A) => R) => (...a: A): R => {
      try {
        return f(...a)
      } catch (err) {
        if ((err as { code?: string }).code === 'ENOENT') vanished++
        throw err
      }
    }
    const ops = wrapOps({
      unlink: counting((dirFd: number, name) => {
        // The first file the walk removes in d0: its siblings and a subdirectory vanish meanwhile,
        // after d0 was listed (the listing is read in batches, so the walk still gets their names).
        if (!deleted && fdPath(dirFd) === `${copy}/build/d0`) {
          deleted = true
          for (const n of fs.readdirSync(`${copy}/build/d0`)) if (!nameIs(name, n)) fs.rmSync(`${copy}/build/d0/${n}`, { recursive: true })
        }
        return systemDirOps.unlink(dirFd, name)
      }),
      openDir: counting((dirFd: number | undefined, name) => systemDirOps.openDir(dirFd, name)),
      lstatType: counting((dirFd: number, name) => systemDirOps.lstatType(dirFd, name)),
    })
    const r = await cleanWith(w, { dirOps: ops })
    assert.ok(deleted && vanished > 0, `precondition: the walk met entries that had vanished (${vanished})`)
    assert.is(r.code, 0, r.log.lines.join('\n'))
    assert.is(entryOf(r.report, copy).outcome, 'removed')
    assert.not.ok(fs.existsSync(copy))
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test('btrfs-progs missing (PATH without btrfs, through the CLI): the btrfs copy fails saying so, untouched (no fallback); the tmpfs build root is cleaned; exit 1', () => {
  const w = makeWorld('bc-hostile-')
  const img = scratchTmpfs('bc-hostile-btrfs-')
  const m = `${img.dir}/m`
  try {
    sh(`truncate -s 300M '${img.dir}/img' && mkfs.btrfs -q '${img.dir}/img' >/dev/null 2>&1
        mkdir '${m}' && mount -o loop '${img.dir}/img' '${m}'
        mkdir -p '${m}/archbuild/extra-x86_64'
        btrfs subvolume create '${m}/archbuild/extra-x86_64/root' >/dev/null
        mkdir -p '${m}/archbuild/extra-x86_64/root/usr' && echo tool > '${m}/archbuild/extra-x86_64/root/usr/tool'
        btrfs subvolume snapshot '${m}/archbuild/extra-x86_64/root' '${m}/archbuild/extra-x86_64/snap' >/dev/null`)
    const snap = `${m}/archbuild/extra-x86_64/snap`
    fs.writeFileSync(`${snap}.lock`, '')
    const plain = makeCopy(`${m}/archbuild/extra-x86_64/plain`)
    age(snap, 30)
    const stale = makeCopy(`${w.group}/stale`)
    const before = { snap: listing(snap), plain: listing(plain) }
    // A PATH with what build-cleaner runs, except btrfs.
    const bin = `${w.dir}/nobtrfs`
    fs.mkdirSync(bin)
    for (const tool of ['flock', 'mount', 'umount']) fs.symlinkSync(sh(`command -v ${tool}`).trim(), `${bin}/${tool}`)
    assert.is.not(spawnSync('/bin/sh', ['-c', 'command -v btrfs'], { env: { PATH: bin } }).status, 0, 'precondition: no btrfs on that PATH')

    const r = runCliSync(['--build-root', `${m}/archbuild`, '--build-root', w.buildRoot, '--run-lock', w.runLock, '--json'], { env: { PATH: bin } })
    assert.is(r.status, 1, r.stderr)
    const report = parseReport(r.stdout, r.stderr)
    for (const c of [snap, plain]) {
      const e = entryOf(report, c)
      assert.is(e.outcome, 'failed', c)
      assert.match(e.error ?? '', `btrfs-progs not installed (no btrfs in PATH): cannot handle subvolumes at ${c}`)
    }
    assert.is(listing(snap), before.snap, 'no fallback deleted the subvolume by other means')
    assert.is(listing(plain), before.plain, 'not even a plain directory on btrfs: nested subvolumes cannot be ruled out')
    assert.is(entryOf(report, stale).outcome, 'removed', 'the other build root was handled')
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    spawnSync('umount', ['-R', '-l', m])
    const loops = spawnSync('losetup', ['-n', '-O', 'NAME', '-j', `${img.dir}/img`], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean)
    for (const dev of loops) spawnSync('losetup', ['-d', dev])
    img.cleanup()
    w.cleanup()
  }
})

/** An Io whose reads of /proc/locks fail with EACCES, after the first `okReads` of them. */
function unreadableLocks(okReads: number): { io: Io; reads: () => number } {
  let reads = 0
  const io = withIo(systemIo, {
    readFile(path) {
      if (path === '/proc/locks' && ++reads > okReads) {
        throw Object.assign(new Error("EACCES: permission denied, open '/proc/locks'"), { code: 'EACCES', errno: -13, syscall: 'open', path })
      }
      return systemIo.readFile(path)
    },
  })
  return { io, reads: () => reads }
}

test('/proc/locks unreadable: for the run lock → an error naming it (exit 1 through bin.ts); for the snapshot → the run stops; nothing deleted', async () => {
  const w = makeWorld('bc-hostile-')
  try {
    const a = makeCopy(`${w.group}/a`)
    const before = listing(w.buildRoot)
    // 1st read: is the run lock also held by a POSIX lock? It cannot tell: the run does not start.
    const first = unreadableLocks(0)
    let out = ''
    const log = recordingLogger()
    try {
      await runClean(options(w), { io: first.io, log, stdout: (t) => void (out += t) })
      assert.unreachable('runClean should have thrown')
    } catch (err) {
      assert.instance(err, CleanerError, String(err))
      assert.is((err as CleanerError).message, "cannot read /proc/locks: open '/proc/locks': EACCES")
    }
    assert.is(first.reads(), 1)
    assert.is(out, '')
    // 2nd read: the snapshot.
    const second = unreadableLocks(1)
    const log2 = recordingLogger()
    const code = await runClean(options(w), { io: second.io, log: log2, stdout: (t) => void (out += t) })
    assert.is(second.reads(), 2)
    assert.is(code, 1)
    assert.ok(log2.lines.includes("error: run stopped: EACCES: permission denied, open '/proc/locks'"), log2.lines.join('\n'))
    assert.ok(fs.existsSync(`${a}/startdir/PKGBUILD`))
    assert.is(listing(w.buildRoot), before, 'nothing deleted')
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test('/proc/locks unreadable after planning: every chroot fails "cannot read /proc/locks" (a lock we cannot check is no lock we may ignore); nothing deleted; exit 1', async () => {
  const w = makeWorld('bc-hostile-')
  try {
    const a = copyWithLeak(`${w.group}/a`)
    const b = makeCopy(`${w.group}/b`)
    const before = { a: listing(a), b: listing(b) }
    const { io, reads } = unreadableLocks(2) // the run lock's and the snapshot's reads work
    const r = await cleanWith(w, { io })
    assert.ok(reads() >= 4, 'precondition: each chroot lock tried to read it')
    assert.is(r.code, 1)
    for (const c of [a, b]) {
      const e = entryOf(r.report, c)
      assert.is(e.action, 'remove', 'precondition: planned for removal')
      assert.is(e.outcome, 'failed', c)
      assert.match(e.error ?? '', "cannot read /proc/locks: open '/proc/locks': EACCES")
    }
    assert.equal(mountPointsBelow(a), [`${a}/tmp`], 'its teardown never started')
    assert.is(listing(a), before.a)
    assert.is(listing(b), before.b)
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

function copyWithLeak(copy: string): string {
  makeCopy(copy)
  leakMount(`${copy}/tmp`)
  age(copy, 30)
  return copy
}

// ------------------------------------------------------------------------- 5. environment

test('a build root on a read-only filesystem: its copies fail with EROFS named (lock file missing too), nothing changes there; the other build root is cleaned; exit 1', () => {
  const w = makeWorld('bc-hostile-')
  try {
    const ro = `${w.dir}/ro`
    sh(`mkdir '${ro}' && mount -t tmpfs rofs '${ro}'`)
    const roCopy = makeCopy(`${ro}/archbuild/extra-x86_64/stale`)
    const noLock = makeCopy(`${ro}/archbuild/extra-x86_64/nolock`, { lock: false })
    execFileSync('mount', ['-o', 'remount,ro', ro])
    assert.throws(() => fs.writeFileSync(`${ro}/probe`, ''), /EROFS/, 'precondition: read-only')
    const roBefore = listing(ro)
    const rw = makeCopy(`${w.group}/stale`)
    const r = runCliSync(['--build-root', `${ro}/archbuild`, '--build-root', w.buildRoot, '--run-lock', w.runLock, '--json'])
    assert.is(r.status, 1, r.stderr)
    const report = parseReport(r.stdout, r.stderr)
    const e = entryOf(report, roCopy)
    assert.is(e.outcome, 'failed')
    assert.match(e.error ?? '', new RegExp(`unlink '${roCopy}/[^']+': EROFS`))
    const n = entryOf(report, noLock)
    assert.is(n.outcome, 'failed')
    assert.match(n.error ?? '', `cannot open lock file: open '${noLock}.lock': EROFS`)
    assert.is(listing(ro), roBefore, 'nothing changed on the read-only filesystem')
    assert.is(entryOf(report, rw).outcome, 'removed')
    assert.not.ok(fs.existsSync(rw))
    assert.match(r.stderr, /removed 1 .*failed 2$/m)
    assert.is(listing(w.canary), w.canaryBefore)
  } finally {
    w.cleanup()
  }
})

test.run()

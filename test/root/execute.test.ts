/**
 * The executor on btrfs and under injected faults: subvolume copies (nested ones too) and
 * plain copies on a real btrfs are removed with the filesystem's other subvolumes intact; a
 * failing btrfs, EACCES or EBUSY mid-walk fails that chroot only, with no unsafe fallback,
 * and the run goes on with the others and exits 1.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { spawnSync } from 'node:child_process'
import { assertRootSandbox, listing, scratchTmpfs, sh, type Scratch } from '../helpers/sys.js'
import { buildFixture, runCli, type Fixture } from '../helpers/fixture.js'
import { errno, nameIs, wrapOps } from '../helpers/remove-tree.js'
import { systemIo, withIo } from '../../src/io.js'
import { recordingLogger } from '../../src/logger.js'
import { runClean } from '../../src/run.js'
import type { RunOptions } from '../../src/options.js'
import { realRunOptions } from '../helpers/build-root.js'

assertRootSandbox()

const options = (buildRoot: string, runLock: string): RunOptions => realRunOptions([buildRoot], runLock)

interface Outcome { path: string; outcome: string; error?: string }
async function runInProcess(opts: RunOptions, extra: Partial<Parameters<typeof runClean>[1]> = {}) {
  let out = ''
  const log = recordingLogger()
  const code = await runClean(opts, { io: systemIo, log, stdout: (t) => void (out += t), ...extra })
  const json = JSON.parse(out) as { chroots: Outcome[] }
  const outcome = (suffix: string) => json.chroots.find((c) => c.path.endsWith(suffix))
  return { code, json, outcome, log }
}

// --- btrfs ---------------------------------------------------------------------------------

let scratch: Scratch
let m: string
let group: string
function makeBtrfsBuildRoot(): void {
  scratch = scratchTmpfs('bc-exec-btrfs-')
  m = `${scratch.dir}/m`
  group = `${m}/archbuild/extra-x86_64`
  sh(`truncate -s 400M '${scratch.dir}/img' && mkfs.btrfs -q '${scratch.dir}/img' >/dev/null 2>&1
      mkdir '${m}' && mount -o loop '${scratch.dir}/img' '${m}'
      btrfs subvolume create '${m}/other' >/dev/null && echo canary > '${m}/other/canary'
      mkdir -p '${group}'
      # devtools on btrfs: root is a subvolume, copies are snapshots of it
      btrfs subvolume create '${group}/root' >/dev/null
      mkdir -p '${group}/root/usr/bin' '${group}/root/var/lib' && echo tool > '${group}/root/usr/bin/tool'
      btrfs subvolume snapshot '${group}/root' '${group}/subcopy' >/dev/null
      btrfs subvolume create '${group}/subcopy/var/lib/machines' >/dev/null
      btrfs subvolume create '${group}/subcopy/var/lib/machines/inner' >/dev/null
      echo i > '${group}/subcopy/var/lib/machines/inner/f'
      mkdir -p '${group}/plaincopy/etc' && echo p > '${group}/plaincopy/etc/f'
      btrfs subvolume create '${group}/plaincopy/nested' >/dev/null && echo n > '${group}/plaincopy/nested/f'
      mkdir -p '${group}/plaincopy2/etc' && echo q > '${group}/plaincopy2/etc/f'
      for c in root subcopy plaincopy plaincopy2; do : > '${group}/'$c.lock; touch -h -d '30 days ago' '${group}/'$c '${group}/'$c/* '${group}/'$c.lock; done`)
}
function dropBtrfs(): void {
  spawnSync('umount', ['-R', '-l', m])
  const loops = spawnSync('losetup', ['-n', '-O', 'NAME', '-j', `${scratch.dir}/img`], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean)
  for (const dev of loops) spawnSync('losetup', ['-d', dev])
  scratch.cleanup()
}

test('btrfs: subvolume copies (with nested subvolumes) and plain copies are removed; root and other subvolumes intact', () => {
  makeBtrfsBuildRoot()
  try {
    const other = listing(`${m}/other`)
    const root = listing(`${group}/root`)
    const r = runCli(['--build-root', `${m}/archbuild`, '--run-lock', `${scratch.dir}/run.lock`, '--json'])
    assert.is(r.status, 0, r.stderr)
    const out = JSON.parse(r.stdout) as { chroots: (Outcome & { btrfsSubvolume: boolean })[] }
    const get = (n: string) => out.chroots.find((c) => c.path === `${group}/${n}`)!
    assert.is(get('subcopy').btrfsSubvolume, true)
    for (const n of ['subcopy', 'plaincopy', 'plaincopy2']) {
      assert.is(get(n).outcome, 'removed', `${n}: ${get(n).error}`)
      assert.not.ok(fs.existsSync(`${group}/${n}`))
      assert.ok(fs.existsSync(`${group}/${n}.lock`))
    }
    assert.is(get('root').outcome, 'kept')
    assert.is(listing(`${group}/root`), root)
    assert.is(listing(`${m}/other`), other)
    const left = sh(`btrfs subvolume list -o '${m}' | awk '{print $NF}' | sort`).trim()
    assert.is(left, 'archbuild/extra-x86_64/root\nother')
  } finally {
    dropBtrfs()
  }
})

test('btrfs failing: that copy fails with btrfs\'s message and stays (no unsafe fallback); the others are removed; exit 1', async () => {
  makeBtrfsBuildRoot()
  try {
    const before = listing(`${group}/subcopy`)
    const io = withIo(systemIo, {
      run: async (file, args, o) =>
        file === 'btrfs' && args.includes('delete') ? { exitCode: 1, stdout: '', stderr: 'ERROR: injected failure' } : systemIo.run(file, args, o),
    })
    const r = await runInProcess(options(`${m}/archbuild`, `${scratch.dir}/run.lock`), { io })
    assert.is(r.code, 1)
    assert.is(r.outcome('/subcopy')?.outcome, 'failed')
    assert.match(r.outcome('/subcopy')?.error ?? '', /injected failure/)
    assert.is(listing(`${group}/subcopy`), before, 'nothing deleted by another means')
    assert.is(r.outcome('/plaincopy2')?.outcome, 'removed')
  } finally {
    dropBtrfs()
  }
})

// --- faults mid-walk -------------------------------------------------------------------------

let fx: Fixture
test('EACCES and EBUSY mid-walk: the copy fails naming path, syscall and code; the other group is still cleaned; exit 1', async () => {
  fx = buildFixture()
  try {
    const ops = wrapOps({
      unlink(dirFd, name) {
        if (nameIs(name, 'PKGBUILD')) throw errno('EACCES', 'unlink')
        return wrapOps({}).unlink(dirFd, name)
      },
      rmdir(dirFd, name) {
        if (nameIs(name, 'tmp')) throw errno('EBUSY', 'rmdir')
        return wrapOps({}).rmdir(dirFd, name)
      },
    })
    const canary = listing(fx.canary)
    // Both stale copies (one per group) hold these names: both must fail the same way.
    const r = await runInProcess(options(fx.buildRoot, `${fx.scratch.dir}/run.lock`), { dirOps: ops })
    assert.is(r.code, 1)
    for (const c of ['/extra-x86_64/stale', '/multilib-x86_64/old']) {
      const o = r.outcome(c)!
      assert.is(o.outcome, 'failed', c)
      assert.match(o.error ?? '', /partially removed/)
      assert.match(o.error ?? '', /unlink '[^']*startdir\/PKGBUILD': EACCES/)
      assert.match(o.error ?? '', /rmdir '[^']*\/tmp': EBUSY/)
      assert.ok(fs.existsSync(`${fx.buildRoot}${c}/startdir/PKGBUILD`))
      assert.not.ok(fs.existsSync(`${fx.buildRoot}${c}/bin`), 'the rest was removed')
    }
    assert.is(r.outcome('/extra-x86_64/root')?.outcome, 'detached', 'the polluted root was still repaired')
    assert.is(listing(fx.canary), canary)
    assert.ok(r.log.lines.some((l) => /^error: .*stale: failed: partially removed/.test(l)), r.log.lines.join('\n'))
  } finally {
    fx.cleanup()
  }
})

test.run()

// discover() on real trees: groups, master and copies, lock files, last use from mtimes, and the
// refusals (a symlink in place of a group, a copy or a lock file is never followed: the canary it
// points at keeps its listing and its atime). validateBuildRoot's refusals. btrfs subvolumes on a
// real loop-mounted btrfs.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { assertRootSandbox, listing, scratchTmpfs, sh } from '../helpers/sys.js'
import { systemIo } from '../../src/io.js'
import { CleanerError } from '../../src/errors.js'
import { discover, validateBuildRoot } from '../../src/discover.js'

assertRootSandbox()

const DAY = 86_400
const T = Math.floor(Date.now() / 1000) - 30 * DAY // seconds; everything below is relative to it

/** Sets atime T and the given mtime (seconds), without following a symlink. */
function touch(path: string, mtime: number): void {
  if (fs.lstatSync(path).isSymbolicLink()) fs.lutimesSync(path, T, mtime)
  else fs.utimesSync(path, T, mtime)
}

function refusedWith(f: () => unknown, pattern: RegExp): void {
  try {
    f()
  } catch (err) {
    assert.instance(err, CleanerError)
    assert.is((err as CleanerError).code, 'EPATH')
    assert.match((err as Error).message, pattern)
    return
  }
  assert.unreachable('expected an EPATH refusal')
}

test('groups, chroots, lock files, last use and refusals in a real build root', async () => {
  const scratch = scratchTmpfs('bc-discover-')
  try {
    const s = scratch.dir
    const br = `${s}/archbuild`
    const extra = `${br}/extra-x86_64`
    const multilib = `${br}/multilib-x86_64`
    const canary = `${s}/canary`
    fs.mkdirSync(`${canary}/sub`, { recursive: true })
    fs.writeFileSync(`${canary}/secret`, 'do not touch\n')
    for (const dir of [`${extra}/root/usr`, `${extra}/alice/usr`, `${extra}/bob/build/deep`, `${extra}/dave`, `${multilib}/root/usr`, `${multilib}/carol/usr`, `${br}/empty-x86_64`]) {
      fs.mkdirSync(dir, { recursive: true })
    }
    for (const f of [`${extra}/root.lock`, `${extra}/alice.lock`, `${extra}/stray.lock`, `${extra}/notes.txt`, `${multilib}/root.lock`, `${br}/README`, `${extra}/bob/build/deep/x`]) {
      fs.writeFileSync(f, '')
    }
    fs.symlinkSync(canary, `${extra}/evil`) // a symlink in place of a copy
    fs.symlinkSync(canary, `${br}/testing-x86_64`) // a symlink in place of a group
    fs.symlinkSync(`${canary}/secret`, `${extra}/dave.lock`) // a symlink in place of a lock file
    fs.symlinkSync(canary, `${multilib}/carol/evil`) // a hostile top-level entry inside a chroot

    // mtimes, deepest first (setting a child's times does not change its parent's mtime)
    touch(`${extra}/root/usr`, T)
    touch(`${extra}/root.lock`, T + 2 * DAY)
    touch(`${extra}/root`, T + 1 * DAY) // → lock is newest: T+2d
    touch(`${extra}/alice/usr`, T)
    touch(`${extra}/alice.lock`, T + 3 * DAY)
    touch(`${extra}/alice`, T + 1 * DAY) // → T+3d
    touch(`${extra}/bob/build/deep/x`, T + 5 * DAY) // deeper than top level: not counted
    touch(`${extra}/bob/build/deep`, T + 5 * DAY)
    touch(`${extra}/bob/build`, T + 4 * DAY)
    touch(`${extra}/bob`, T + 1 * DAY) // → top-level build/ is newest: T+4d
    touch(`${multilib}/root/usr`, T)
    touch(`${multilib}/root.lock`, T)
    touch(`${multilib}/root`, T) // → T
    touch(`${multilib}/carol/usr`, T)
    touch(`${multilib}/carol/evil`, T)
    touch(`${multilib}/carol`, T + 2 * DAY) // → the dir itself: T+2d (never the canary's T+9d)
    touch(`${canary}/secret`, T + 9 * DAY)
    touch(`${canary}/sub`, T + 9 * DAY)
    touch(canary, T + 9 * DAY)

    const canaryBefore = listing(canary) // reads the canary: set its atimes back afterwards
    const buildRootBefore = listing(br)
    // atime T < mtime, ctime: under relatime any read of them now moves their atime.
    for (const p of [`${canary}/secret`, `${canary}/sub`, canary]) touch(p, T + 9 * DAY)
    const canaryAtimes = () => [canary, `${canary}/sub`, `${canary}/secret`].map((p) => fs.lstatSync(p).atimeMs)
    const atimesBefore = canaryAtimes()

    const found = await discover(systemIo, [br, `${br}/`])

    assert.equal(found.buildRoots, [br])
    assert.equal(found.groups, [`${br}/empty-x86_64`, extra, multilib])
    assert.equal(
      found.chroots.map((c) => [c.path, c.group, c.name, c.kind, c.lockFile?.path, (c.lastUsed / 1000 - T) / DAY]),
      [
        [`${extra}/alice`, 'extra-x86_64', 'alice', 'copy', `${extra}/alice.lock`, 3],
        [`${extra}/bob`, 'extra-x86_64', 'bob', 'copy', undefined, 4],
        [`${extra}/root`, 'extra-x86_64', 'root', 'root', `${extra}/root.lock`, 2],
        [`${multilib}/carol`, 'multilib-x86_64', 'carol', 'copy', undefined, 2],
        [`${multilib}/root`, 'multilib-x86_64', 'root', 'root', `${multilib}/root.lock`, 0],
      ],
    )
    for (const c of found.chroots) {
      const st = fs.lstatSync(c.path)
      assert.equal([c.buildRoot, c.dev, c.ino, c.fsType, c.btrfsSubvolume], [br, st.dev, st.ino, 'other', false], c.path)
      if (c.lockFile) {
        const lock = fs.lstatSync(c.lockFile.path)
        assert.equal([c.lockFile.dev, c.lockFile.ino], [lock.dev, lock.ino])
      }
    }
    assert.equal(
      [...found.refused].sort((a, b) => a.path.localeCompare(b.path)),
      [
        { path: `${extra}/dave.lock`, reason: 'lock file is a symlink: not followed' },
        { path: `${extra}/evil`, reason: 'symlink: not followed' },
        { path: `${br}/testing-x86_64`, reason: 'symlink: not followed' },
      ],
    )

    // Nothing changed: not the canary's atimes (checked first: listing reads), not the canary,
    // not the build root (no lock file created).
    assert.equal(canaryAtimes(), atimesBefore)
    assert.is(listing(canary), canaryBefore)
    assert.is(listing(br), buildRootBefore)
    assert.not.ok(fs.existsSync(`${extra}/bob.lock`))
    // Control: reading through the link WOULD have shown in the canary's atime.
    for (const p of [`${canary}/sub`, canary]) touch(p, T + 9 * DAY)
    fs.readdirSync(`${extra}/evil`)
    assert.is.not(canaryAtimes()[0], atimesBefore[0])
  } finally {
    scratch.cleanup()
  }
})

test('validateBuildRoot: canonical path, refusals with the path and the reason', () => {
  const scratch = scratchTmpfs('bc-buildroot-')
  const savedCwd = process.cwd()
  try {
    const s = fs.realpathSync(scratch.dir)
    fs.mkdirSync(`${s}/archbuild`)
    fs.writeFileSync(`${s}/file`, '')
    fs.symlinkSync(`${s}/archbuild`, `${s}/brlink`)
    fs.symlinkSync(s, `${s}/via`)

    assert.is(validateBuildRoot(systemIo, `${s}/archbuild`), `${s}/archbuild`)
    assert.is(validateBuildRoot(systemIo, `${s}/archbuild/`), `${s}/archbuild`)
    assert.is(validateBuildRoot(systemIo, `${s}/via/archbuild`), `${s}/archbuild`, 'a symlinked parent is fine')
    process.chdir(s)
    assert.is(validateBuildRoot(systemIo, 'archbuild'), `${s}/archbuild`, 'relative to the cwd')
    assert.is(validateBuildRoot(systemIo, './via/../archbuild'), `${s}/archbuild`)
    process.chdir(savedCwd)

    refusedWith(() => validateBuildRoot(systemIo, '/'), /"\/" is \//)
    refusedWith(() => validateBuildRoot(systemIo, '/tmp/..'), /"\/tmp\/\.\." is \//)
    refusedWith(() => validateBuildRoot(systemIo, `${s}/brlink`), /brlink" is a symlink/)
    refusedWith(() => validateBuildRoot(systemIo, `${s}/brlink/`), /brlink\/" is a symlink/)
    refusedWith(() => validateBuildRoot(systemIo, `${s}/file`), /file" is not a directory/)
    refusedWith(() => validateBuildRoot(systemIo, `${s}/file/x`), /x" is not a directory/)
    refusedWith(() => validateBuildRoot(systemIo, `${s}/missing`), /missing" does not exist/)
    refusedWith(() => validateBuildRoot(systemIo, ''), /is empty/)
  } finally {
    process.chdir(savedCwd)
    scratch.cleanup()
  }
})

test('discover refuses a build root that is a symlink', async () => {
  const scratch = scratchTmpfs('bc-buildroot-')
  try {
    fs.mkdirSync(`${scratch.dir}/real/extra-x86_64/root`, { recursive: true })
    fs.symlinkSync(`${scratch.dir}/real`, `${scratch.dir}/link`)
    try {
      await discover(systemIo, [`${scratch.dir}/link`])
      assert.unreachable('expected EPATH')
    } catch (err) {
      assert.is((err as CleanerError).code, 'EPATH')
    }
  } finally {
    scratch.cleanup()
  }
})

test('on btrfs: a subvolume copy is a btrfs subvolume, a plain-directory copy is not', async () => {
  const scratch = scratchTmpfs('bc-btrfs-')
  const mnt = `${scratch.dir}/btrfs`
  try {
    sh(`truncate -s 120M '${scratch.dir}/img' && mkfs.btrfs -q '${scratch.dir}/img' >/dev/null 2>&1 && mkdir '${mnt}' && mount -o loop '${scratch.dir}/img' '${mnt}'`)
    const g = `${mnt}/archbuild/extra-x86_64`
    fs.mkdirSync(g, { recursive: true })
    sh(`btrfs subvolume create '${g}/root' >/dev/null && btrfs subvolume create '${g}/sub' >/dev/null && mkdir '${g}/plain'`)
    fs.writeFileSync(`${g}/root.lock`, '')

    const found = await discover(systemIo, [`${mnt}/archbuild`])
    assert.equal(
      found.chroots.map((c) => [c.name, c.fsType, c.btrfsSubvolume]),
      [
        ['plain', 'btrfs', false],
        ['root', 'btrfs', true],
        ['sub', 'btrfs', true],
      ],
    )
    // Every subvolume has its own st_dev (KERNEL-NOTES): identities differ although ino is 256.
    const [, root, sub] = found.chroots
    assert.equal([root!.ino, sub!.ino], [256, 256])
    assert.is.not(root!.dev, sub!.dev)
  } finally {
    sh(`umount '${mnt}' 2>/dev/null || true`)
    scratch.cleanup()
  }
})

test.run()

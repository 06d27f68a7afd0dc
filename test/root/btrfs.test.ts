// btrfs subvolumes on a real btrfs (a loop-mounted image in a scratch tmpfs), seen through a
// `subvol=/@` mount as on a real root filesystem: a subvolume copy with nested subvolumes (one
// directly inside, one deeper in a subdirectory, one nested two levels like systemd's
// /var/lib/machines), a plain-directory copy holding a subvolume, a snapshot whose nested
// subvolume became a placeholder directory, and subvolumes next to them plus canaries that must
// survive everything: finding, deleting deepest-first, a failing or missing btrfs, and a
// hostile chroot swapping directories (symlink, bind mount, another subvolume) mid-delete.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { spawnSync } from 'node:child_process'
import { assertRootSandbox, listing, scratchTmpfs, sh, type Scratch } from '../helpers/sys.js'
import { deleteSubvolumes, findSubvolumesBelow, isBtrfs, parseSubvolumeList } from '../../src/btrfs.js'
import { CleanerError } from '../../src/errors.js'
import { rejects } from '../helpers/assert.js'
import { systemIo, withIo, type Io, type RunResult } from '../../src/io.js'
import { recordingLogger } from '../../src/logger.js'

assertRootSandbox()

let scratch: Scratch
let top: string // the filesystem's top level (subvolid 5)
let m: string // the same filesystem mounted with subvol=/@
let grp: string // <m>/archbuild/extra-x86_64, a plain directory in @
test.before.each(() => {
  scratch = scratchTmpfs('bc-btrfs-')
  const d = scratch.dir
  top = `${d}/top`
  m = `${d}/m`
  grp = `${m}/archbuild/extra-x86_64`
  const g = `${top}/@/archbuild/extra-x86_64`
  sh(`
    truncate -s 300M '${d}/img'
    mkfs.btrfs -q '${d}/img' >/dev/null 2>&1
    mkdir '${top}' '${m}'
    mount -o loop '${d}/img' '${top}'
    sv() { btrfs subvolume create "$1" >/dev/null; }
    sv '${top}/@'; sv '${top}/other'; echo canary > '${top}/other/canary'
    mkdir -p '${g}'; echo canary > '${g}/canary.txt'
    sv '${g}/copy'
    mkdir -p '${g}/copy/usr/bin' '${g}/copy/var/lib'; echo data > '${g}/copy/usr/bin/tool'
    sv '${g}/copy/sub1'; echo 1 > '${g}/copy/sub1/f'
    sv '${g}/copy/var/lib/machines'; echo m > '${g}/copy/var/lib/machines/f'
    sv '${g}/copy/var/lib/machines/inner'; echo i > '${g}/copy/var/lib/machines/inner/f'
    btrfs subvolume snapshot '${g}/copy' '${g}/snap' >/dev/null
    mkdir -p '${g}/plain/etc'; echo p > '${g}/plain/etc/f'
    sv '${g}/plain/nested'; echo n > '${g}/plain/nested/f'
    sv '${g}/copy2'; sv '${g}/copy2/sub'
    sv '${g}/sibling'; echo s > '${g}/sibling/f'
    mkdir -p '${g}/victim/lib'; sv '${g}/victim/lib/machines'; sv '${g}/victim/lib/machines/inner'; echo v > '${g}/victim/lib/machines/inner/f'
    mount -o subvol=/@ "$(findmnt -n -o SOURCE --target '${top}' | head -1)" '${m}'
  `)
})
test.after.each(() => {
  const img = `${scratch.dir}/img`
  spawnSync('umount', ['-R', m])
  spawnSync('umount', ['-R', top])
  const loops = spawnSync('losetup', ['-n', '-O', 'NAME', '-j', img], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean)
  for (const dev of loops) spawnSync('losetup', ['-d', dev])
  scratch.cleanup()
})

const listAll = () => parseSubvolumeList(sh(`btrfs subvolume list -a '${top}'`))
/** Every subvolume of the filesystem, by path from its top level. */
const subvolumes = (): string[] => listAll().map((s) => s.path).sort()
/** Every subvolume id: unchanged when a hostile rename moved subvolumes but nothing was deleted. */
const subvolumeIds = (): number[] => listAll().map((s) => s.id).sort((a, b) => a - b)

/**
 * listing(), except for btrfs's placeholder directories (inode 2, where a snapshot had a nested
 * subvolume): the kernel makes their times up afresh each time it instantiates them.
 */
function stableListing(root: string): string {
  return listing(root)
    .split('\n')
    .map((line) => {
      const [kind, mode, size, , ...rest] = line.split(' ')
      const rel = rest.join(' ')
      return fs.lstatSync(rel === '.' ? root : `${root}/${rel}`).ino === 2 ? `${kind} ${mode} ${size} placeholder ${rel}` : line
    })
    .join('\n')
}

/** Everything that must survive when only `copy` (and what is in it) goes. */
const bystanders = () =>
  [`${top}/other`, `${grp}/canary.txt`, `${grp}/snap`, `${grp}/plain`, `${grp}/copy2`, `${grp}/sibling`, `${grp}/victim`]
    .map((p) => stableListing(p))
    .join('\n')

test('isBtrfs: the btrfs mounts are, the scratch tmpfs is not', () => {
  assert.ok(isBtrfs(systemIo, grp))
  assert.ok(isBtrfs(systemIo, top))
  assert.not.ok(isBtrfs(systemIo, scratch.dir))
})

test('findSubvolumesBelow: exactly the nested subvolumes, deepest first, through either mount', async () => {
  const copy = `${grp}/copy`
  assert.equal(await findSubvolumesBelow(systemIo, copy), [`${copy}/var/lib/machines/inner`, `${copy}/var/lib/machines`, `${copy}/sub1`])
  // the same filesystem seen through its top-level mount (mountinfo root `/` instead of `/@`)
  const viaTop = `${top}/@/archbuild/extra-x86_64/copy`
  assert.equal(await findSubvolumesBelow(systemIo, viaTop), [`${viaTop}/var/lib/machines/inner`, `${viaTop}/var/lib/machines`, `${viaTop}/sub1`])
  assert.equal(await findSubvolumesBelow(systemIo, `${grp}/plain`), [`${grp}/plain/nested`], 'a plain-directory copy')
  assert.equal(await findSubvolumesBelow(systemIo, `${grp}/copy2`), [`${grp}/copy2/sub`], '/copy is not inside /copy2')
  const placeholder = fs.lstatSync(`${grp}/snap/sub1`)
  assert.is(placeholder.ino, 2, 'the snapshot holds a placeholder directory where copy has sub1')
  assert.equal(await findSubvolumesBelow(systemIo, `${grp}/snap`), [], 'placeholders are plain directories')
  assert.equal(await findSubvolumesBelow(systemIo, scratch.dir), [], 'not btrfs: none')
})

test('deleteSubvolumes with includeSelf: nested ones deepest first, then the copy; everything else intact', async () => {
  const copy = `${grp}/copy`
  const others = bystanders()
  const allBefore = subvolumes()
  const log = recordingLogger()
  const { deleted } = await deleteSubvolumes(systemIo, copy, { includeSelf: true, log })
  assert.equal(deleted, [`${copy}/var/lib/machines/inner`, `${copy}/var/lib/machines`, `${copy}/sub1`, copy])
  assert.not.ok(fs.existsSync(copy), 'the copy is gone')
  const gone = ['@/archbuild/extra-x86_64/copy', '@/archbuild/extra-x86_64/copy/sub1', '@/archbuild/extra-x86_64/copy/var/lib/machines', '@/archbuild/extra-x86_64/copy/var/lib/machines/inner']
  assert.equal(subvolumes(), allBefore.filter((p) => !gone.includes(p)))
  assert.is(bystanders(), others)
  assert.is(fs.readFileSync(`${top}/other/canary`, 'utf8'), 'canary\n')
  assert.ok(log.lines.some((l) => l.includes('(id ')), 'deleted by subvolume id')
})

test('deleteSubvolumes without includeSelf on a plain-directory copy: only the nested subvolume goes', async () => {
  const plain = `${grp}/plain`
  const copyBefore = listing(`${grp}/copy`)
  const { deleted } = await deleteSubvolumes(systemIo, plain, { includeSelf: false })
  assert.equal(deleted, [`${plain}/nested`])
  assert.equal(fs.readdirSync(plain), ['etc'], 'the plain directory and its files remain for the remover')
  assert.is(fs.readFileSync(`${plain}/etc/f`, 'utf8'), 'p\n')
  assert.is(listing(`${grp}/copy`), copyBefore)
  // the subvolume copy keeps itself when includeSelf is false
  const kept = await deleteSubvolumes(systemIo, `${grp}/copy2`, { includeSelf: false })
  assert.equal(kept.deleted, [`${grp}/copy2/sub`])
  assert.equal(fs.lstatSync(`${grp}/copy2`).ino, 256)
})

test('includeSelf on a directory that is not a subvolume: EBTRFS before anything is deleted', async () => {
  const before = subvolumes()
  const err = await rejects(deleteSubvolumes(systemIo, `${grp}/plain`, { includeSelf: true }), 'EBTRFS')
  assert.match(err.message, 'not a btrfs subvolume')
  assert.equal(subvolumes(), before)
  await rejects(deleteSubvolumes(systemIo, scratch.dir, { includeSelf: true }), 'EBTRFS')
  assert.equal(await deleteSubvolumes(systemIo, scratch.dir, { includeSelf: false }), { deleted: [] })
})

test('btrfs failing: EBTRFS naming the path, exit code and stderr; nothing else deleted, no fallback', async () => {
  const copy = `${grp}/copy`
  const before = subvolumes()
  const copyBefore = listing(copy)
  const others = bystanders()
  const io = withIo(systemIo, {
    run: async (file, args, o): Promise<RunResult> =>
      file === 'btrfs' && args[1] === 'delete'
        ? { exitCode: 1, stdout: '', stderr: 'ERROR: Could not destroy subvolume/snapshot: Operation not permitted' }
        : systemIo.run(file, args, o),
    open: (p, flags) => {
      if (p.includes('/copy/usr')) throw new Error('walked into a plain directory: a fallback delete?')
      return systemIo.open(p, flags)
    },
  })
  const err = await rejects(deleteSubvolumes(io, copy, { includeSelf: true }), 'EBTRFS')
  assert.is(err.path, `${copy}/var/lib/machines/inner`)
  assert.match(err.message, 'exit 1')
  assert.match(err.message, 'Operation not permitted')
  assert.equal(subvolumes(), before)
  assert.is(listing(copy), copyBefore)
  assert.is(bystanders(), others)
})

test('btrfs-progs missing: EBTRFS saying so', async () => {
  const io = withIo(systemIo, {
    run: async (file, args, o): Promise<RunResult> =>
      file === 'btrfs' ? { exitCode: -1, stdout: '', stderr: '', failure: 'Command failed with ENOENT: btrfs subvolume list' } : systemIo.run(file, args, o),
  })
  const err = await rejects(deleteSubvolumes(io, `${grp}/copy`, { includeSelf: true }), 'EBTRFS')
  assert.match(err.message, 'btrfs-progs not installed')
  assert.ok(fs.existsSync(`${grp}/copy/sub1/f`))
})

/** An Io whose `btrfs subvolume list` lets the hostile chroot act right after it answered. */
function racing(afterList: () => void): Io {
  return withIo(systemIo, {
    run: async (file, args, o) => {
      const r = await systemIo.run(file, args, o)
      if (file === 'btrfs' && args[1] === 'list') afterList()
      return r
    },
  })
}

test('race: a directory swapped for a symlink to another subvolume tree after listing: refused, victim intact', async () => {
  const copy = `${grp}/copy`
  const before = subvolumeIds()
  const victim = listing(`${grp}/victim`)
  const io = racing(() => sh(`mv '${copy}/var' '${copy}/var.moved' && ln -s ../victim '${copy}/var'`))
  const err = await rejects(deleteSubvolumes(io, copy, { includeSelf: true }), 'EBTRFS')
  assert.match(err.message, 'symlink')
  assert.equal(subvolumeIds(), before, 'nothing deleted')
  assert.is(listing(`${grp}/victim`), victim)
})

test('race: a directory replaced by a bind mount of another subvolume tree after listing: refused, victim intact', async () => {
  const copy = `${grp}/copy`
  const before = subvolumeIds()
  const victim = listing(`${grp}/victim`)
  const io = racing(() => sh(`mv '${copy}/var' '${copy}/var.moved' && mkdir '${copy}/var' && mount --bind '${grp}/victim' '${copy}/var'`))
  try {
    const err = await rejects(deleteSubvolumes(io, copy, { includeSelf: true }), 'EBTRFS')
    assert.match(err.message, 'another mount')
    assert.equal(subvolumeIds(), before, 'nothing deleted')
    assert.is(listing(`${grp}/victim`), victim)
  } finally {
    spawnSync('umount', [`${copy}/var`])
  }
})

test('race: a subvolume swapped for another one after listing: its id does not match, it survives', async () => {
  const copy = `${grp}/copy`
  const sibling = listing(`${grp}/sibling`)
  const io = racing(() => sh(`mv '${copy}/sub1' '${copy}/sub1.moved' && mv '${grp}/sibling' '${copy}/sub1'`))
  const err = await rejects(deleteSubvolumes(io, copy, { includeSelf: true }), 'EBTRFS')
  assert.match(err.message, 'changed while deleting')
  assert.is(listing(`${copy}/sub1`), sibling, 'the swapped-in subvolume is intact')
  assert.ok(fs.existsSync(copy), 'the copy itself was not deleted')
  assert.ok(fs.existsSync(`${copy}/sub1.moved/f`))
})

test('race: a nested subvolume deleted by someone else after listing is skipped, the rest goes', async () => {
  const copy = `${grp}/copy`
  const io = racing(() => sh(`btrfs subvolume delete '${copy}/sub1' >/dev/null`))
  const { deleted } = await deleteSubvolumes(io, copy, { includeSelf: true })
  assert.equal(deleted, [`${copy}/var/lib/machines/inner`, `${copy}/var/lib/machines`, copy])
  assert.not.ok(fs.existsSync(copy))
})

test('parseSubvolumeList: strips <FS_TREE>/, keeps spaces, refuses a line it cannot read', () => {
  assert.equal(
    parseSubvolumeList('ID 256 gen 7 top level 5 path <FS_TREE>/@\nID 258 gen 7 top level 257 path @/a b/c\n'),
    [{ id: 256, path: '@' }, { id: 258, path: '@/a b/c' }],
  )
  try {
    parseSubvolumeList('ID 256 gen 7 top level 5 path @\ngarbage from a name with a newline\n')
    assert.unreachable('should throw')
  } catch (err) {
    assert.is((err as CleanerError).code, 'EPARSE')
    assert.match((err as Error).message, 'line 2')
  }
})

test.run()

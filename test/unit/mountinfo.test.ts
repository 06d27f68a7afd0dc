/**
 * parseMountinfo and MountTable on captured mountinfo text: escapes, optional fields,
 * over-mounts, boundaries, malformed lines.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CleanerError } from '../../src/errors.js'
import { withIo, systemIo } from '../../src/io.js'
import { MountTable, escapeMountPath, parseMountinfo, readMountTable, unescapeMountPath, type Mount } from '../../src/mountinfo.js'

// Captured on the build machine (the /dev/pts pair is a real over-mount: 29's parent is 26).
const CAPTURED = `22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12358300k,nr_inodes=3089575,mode=755
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
28 27 0:25 / /mnt/sandboxing/model_tools_env/v1/python ro,nosuid,nodev,relatime - tmpfs model_tools_unavailable ro,size=4k,mode=755
29 26 0:26 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
`

function mountsOf(text: string): Mount[] {
  return parseMountinfo(text)
}

function parseError(text: string): CleanerError {
  try {
    parseMountinfo(text)
  } catch (err) {
    assert.instance(err, CleanerError)
    return err as CleanerError
  }
  throw new Error(`expected EPARSE for ${JSON.stringify(text)}`)
}

/** A line in the kernel's shape with the fields that matter to a test. */
function line(id: number, parent: number, mountPoint: string, optional = ''): string {
  return `${id} ${parent} 0:${id} / ${escapeMountPath(mountPoint)} rw,relatime ${optional}${optional ? ' ' : ''}- tmpfs tmpfs rw`
}

test('captured lines: every field, as the kernel gives it', () => {
  const mounts = mountsOf(CAPTURED)
  assert.is(mounts.length, 6)
  const root = mounts[3]!
  assert.equal(
    { ...root },
    {
      id: 27,
      parentId: 1,
      major: 254,
      minor: 0,
      root: '/',
      mountPoint: '/',
      options: ['rw', 'relatime'],
      optionalFields: [],
      shared: undefined,
      master: undefined,
      propagateFrom: undefined,
      unbindable: false,
      fsType: 'ext4',
      source: '/dev/vda',
      superOptions: ['rw', 'discard', 'resv_strict', 'resuid=65534', 'resgid=65534'],
    },
  )
  assert.equal(mounts[4]!.options, ['ro', 'nosuid', 'nodev', 'relatime'])
  assert.is(mounts[4]!.source, 'model_tools_unavailable')
})

test('optional fields: none, shared, master, propagate_from, unbindable, several together', () => {
  const mounts = mountsOf(
    [
      '30 27 8:1 / /a rw - ext4 /dev/sda1 rw',
      '31 27 8:1 / /b rw shared:5 - ext4 /dev/sda1 rw',
      '32 27 8:1 / /c rw master:2 - ext4 /dev/sda1 rw',
      '33 27 8:1 / /d rw master:2 propagate_from:7 - ext4 /dev/sda1 rw',
      '34 27 8:1 / /e rw unbindable - ext4 /dev/sda1 rw',
      '35 27 8:1 / /f rw shared:12 master:3 - ext4 /dev/sda1 rw',
      '36 27 8:1 / /g rw shared:1 future:x - ext4 /dev/sda1 rw',
    ].join('\n'),
  )
  const pick = (m: Mount) => [m.optionalFields, m.shared, m.master, m.propagateFrom, m.unbindable]
  assert.equal(pick(mounts[0]!), [[], undefined, undefined, undefined, false])
  assert.equal(pick(mounts[1]!), [['shared:5'], 5, undefined, undefined, false])
  assert.equal(pick(mounts[2]!), [['master:2'], undefined, 2, undefined, false])
  assert.equal(pick(mounts[3]!), [['master:2', 'propagate_from:7'], undefined, 2, 7, false])
  assert.equal(pick(mounts[4]!), [['unbindable'], undefined, undefined, undefined, true])
  assert.equal(pick(mounts[5]!), [['shared:12', 'master:3'], 12, 3, undefined, false])
  // proc(5): parsers ignore optional fields they do not know; kept raw
  assert.equal(pick(mounts[6]!), [['shared:1', 'future:x'], 1, undefined, undefined, false])
})

test('octal escapes in mount points, roots and sources: space, tab, newline, backslash', () => {
  const [m] = mountsOf(
    '40 27 0:50 /sub\\040dir/a\\011b /var/lib/archbuild/extra\\040x86_64/us\\012er\\134n rw - tmpfs my\\040src rw\n',
  )
  assert.is(m!.root, '/sub dir/a\tb')
  assert.is(m!.mountPoint, '/var/lib/archbuild/extra x86_64/us\ner\\n')
  assert.is(m!.source, 'my src')
})

test('the "-" separator: fs type with subtype, empty source, mount point named "-"', () => {
  const mounts = mountsOf(
    ['41 27 0:51 / /- rw shared:9 - fuse.sshfs host:/x rw,user_id=0', '42 27 0:52 / /empty rw - tmpfs  rw,size=4k'].join('\n'),
  )
  assert.is(mounts[0]!.mountPoint, '/-')
  assert.is(mounts[0]!.fsType, 'fuse.sshfs')
  assert.is(mounts[0]!.source, 'host:/x')
  assert.equal(mounts[0]!.optionalFields, ['shared:9'])
  assert.is(mounts[1]!.source, '')
  assert.equal(mounts[1]!.superOptions, ['rw', 'size=4k'])
})

test('unescapeMountPath: any \\ooo is a byte; escaped UTF-8 bytes decode together', () => {
  assert.is(unescapeMountPath('/a\\040b'), '/a b')
  assert.is(unescapeMountPath('/caf\\303\\251'), '/café')
  assert.is(unescapeMountPath('/ü\\040x'), '/ü x')
  assert.is(unescapeMountPath('/lone\\ and \\9xx'), '/lone\\ and \\9xx')
  assert.is(escapeMountPath('/a b\tc\nd\\e/ü'), '/a\\040b\\011c\\012d\\134e/ü')
})

test('empty text is no mounts; a trailing newline is not a line', () => {
  assert.equal(parseMountinfo(''), [])
  assert.is(parseMountinfo(CAPTURED).length, parseMountinfo(CAPTURED.trimEnd()).length)
})

test('malformed lines are EPARSE naming the line number', () => {
  const cases: Array<[string, RegExp]> = [
    ['22 27 0:21 / /proc rw - proc', /line 2: expected at least 10 fields/],
    ['22 27 0:21 / /proc rw shared:1 proc proc rw', /line 2: no "-" separator/],
    ['22 27 0:21 / /proc rw shared:1 x - proc proc', /line 2: expected fstype, source and super options/],
    ['2x 27 0:21 / /proc rw - proc proc rw', /line 2: mount ids must be decimal/],
    ['22 -1 0:21 / /proc rw - proc proc rw', /line 2: mount ids must be decimal/],
    ['22 27 0-21 / /proc rw - proc proc rw', /line 2: expected major:minor/],
    ['22 27 0:21 / /proc rw shared:x - proc proc rw', /line 2: optional field "shared:x"/],
    ['', /line 2: expected at least 10 fields, got 1/],
  ]
  for (const [bad, message] of cases) {
    const err = parseError(`27 1 254:0 / / rw - ext4 /dev/vda rw\n${bad}\n28 27 0:1 / /x rw - tmpfs t rw\n`)
    assert.is(err.code, 'EPARSE')
    assert.match(err.message, message)
  }
})

// 10 /  ── 11 /x ──┬─ 12 /x/user ── 13 /x/user/run ── 14 /x/user/run/user/1000
//                  ├─ 15 /x/user2
//                  └─ 16 /x/user (over-mount of 12) ── 17 /x/user/tmp
const TREE = [
  line(10, 1, '/'),
  line(11, 10, '/x'),
  line(12, 11, '/x/user'),
  line(13, 12, '/x/user/run'),
  line(14, 13, '/x/user/run/user/1000'),
  line(15, 11, '/x/user2'),
  line(16, 12, '/x/user'),
  line(17, 16, '/x/user/tmp'),
].join('\n')

const ids = (mounts: readonly Mount[]) => mounts.map((m) => m.id)

test('below(): boundary-aware, over-mounts included, table order', () => {
  const table = new MountTable(parseMountinfo(TREE))
  assert.equal(ids(table.below('/x/user')), [12, 13, 14, 16, 17])
  assert.equal(ids(table.below('/x/user2')), [15])
  assert.equal(ids(table.below('/x/use')), [])
  assert.equal(ids(table.below('/x/user/run/user')), [14])
  assert.equal(ids(table.below('/')), [10, 11, 12, 13, 14, 15, 16, 17])
})

test('mountPoints(): every mount point once; a fresh set each call', () => {
  const table = new MountTable(parseMountinfo(TREE))
  const points = table.mountPoints()
  assert.equal([...points].sort(), ['/', '/x', '/x/user', '/x/user/run', '/x/user/run/user/1000', '/x/user/tmp', '/x/user2'])
  points.clear()
  assert.is(table.mountPoints().size, 7)
})

test('deepestFirst(): children before parents, the over-mount before the mount it covers', () => {
  const table = new MountTable(parseMountinfo(TREE))
  const order = ids(table.deepestFirst(table.below('/x/user')))
  assert.equal(order, [14, 13, 17, 16, 12])
  // every mount before its parent, in the whole tree and with input order reversed
  const all = ids(table.deepestFirst([...table.mounts].reverse()))
  for (const m of table.mounts) {
    if (all.includes(m.parentId)) assert.ok(all.indexOf(m.id) < all.indexOf(m.parentId), `${m.id} before ${m.parentId}`)
  }
  assert.is(all[all.length - 1], 10)
})

test('deepestFirst(): ancestors count even when the mount between them is not given', () => {
  const table = new MountTable(parseMountinfo(TREE))
  const [a, c] = [table.byId(12)!, table.byId(14)!] // 13 sits between them
  assert.equal(ids(table.deepestFirst([a, c])), [14, 12])
})

test('deepestFirst(): a deep chain of 5,000 nested mounts (no recursion limit)', () => {
  const lines = [line(1, 0, '/d')]
  for (let i = 2; i <= 5000; i++) lines.push(line(i, i - 1, `/d/${i}`))
  const table = new MountTable(parseMountinfo(lines.join('\n')))
  const order = ids(table.deepestFirst(table.mounts))
  assert.is(order[0], 5000)
  assert.is(order[4999], 1)
})

test('tops(): mounts whose parent is not in the set', () => {
  const table = new MountTable(parseMountinfo(TREE))
  assert.equal(ids(table.tops(table.below('/x/user'))), [12])
  assert.equal(ids(table.tops(table.below('/x/user/run'))), [13])
  assert.equal(ids(table.tops([table.byId(15)!, table.byId(13)!, table.byId(17)!])), [15, 13, 17])
})

test('cycles and missing parents: every mount ordered once, every mount under some top', () => {
  // 50 ↔ 51 is a cycle, 52 is a child of the cycle, 53's parent is unknown
  const mounts = parseMountinfo([line(50, 51, '/c'), line(51, 50, '/c/d'), line(52, 51, '/c/d/e'), line(53, 99, '/o')].join('\n'))
  const table = new MountTable(mounts)
  const order = ids(table.deepestFirst(mounts))
  assert.equal([...order].sort(), [50, 51, 52, 53])
  assert.ok(order.indexOf(52) < order.indexOf(51))
  const tops = ids(table.tops(mounts))
  assert.ok(tops.includes(53))
  assert.is(tops.filter((id) => id === 50 || id === 51).length, 1)
  // a self-parented mount does not loop either
  const self = new MountTable(parseMountinfo(line(60, 60, '/s')))
  assert.equal(ids(self.deepestFirst(self.mounts)), [60])
  assert.equal(ids(self.tops(self.mounts)), [60])
  assert.is(self.mountOf('/s/x')?.id, 60)
})

test('mountOf(): longest mount point at or above, topmost of a stack, on boundaries', () => {
  const table = new MountTable(parseMountinfo(TREE))
  assert.is(table.mountOf('/x/user/build/pkg')?.id, 16)
  assert.is(table.mountOf('/x/user')?.id, 16)
  assert.is(table.mountOf('/x/user2/y')?.id, 15)
  assert.is(table.mountOf('/x/user22')?.id, 11)
  assert.is(table.mountOf('/elsewhere')?.id, 10)
  assert.is(table.mountOf('/x/user/run/user/1000/bus')?.id, 14)
  assert.is(table.mountOf('relative'), undefined)
  // three stacked on one point, listed out of order: the one nobody covers
  const stack = new MountTable(parseMountinfo([line(3, 2, '/p'), line(1, 0, '/p'), line(2, 1, '/p')].join('\n')))
  assert.is(stack.mountOf('/p/f')?.id, 3)
  assert.equal(ids(stack.deepestFirst(stack.mounts)), [3, 2, 1])
  // two mounts on one point, neither covering the other: the later one in mountinfo order
  const twins = new MountTable(parseMountinfo([line(5, 0, '/q'), line(6, 99, '/q')].join('\n')))
  assert.is(twins.mountOf('/q')?.id, 6)
  assert.is(new MountTable([]).mountOf('/'), undefined)
})

test('captured over-mount: the /dev/pts pair', () => {
  const table = new MountTable(parseMountinfo(CAPTURED))
  assert.equal(ids(table.below('/dev/pts')), [26, 29])
  assert.equal(ids(table.deepestFirst(table.below('/dev'))), [29, 26, 24])
  assert.is(table.mountOf('/dev/pts/0')?.id, 29)
})

test('byId(); readMountTable() reads /proc/self/mountinfo through the Io seam', () => {
  const io = withIo(systemIo, {
    readFile: (p) => {
      assert.is(p, '/proc/self/mountinfo')
      return CAPTURED
    },
  })
  const table = readMountTable(io)
  assert.is(table.byId(28)?.mountPoint, '/mnt/sandboxing/model_tools_env/v1/python')
  assert.is(table.byId(999), undefined)
  const failing = withIo(systemIo, {
    readFile: () => {
      throw Object.assign(new Error('EACCES'), { code: 'EACCES', syscall: 'open', path: '/proc/self/mountinfo' })
    },
  })
  try {
    readMountTable(failing)
    assert.unreachable()
  } catch (err) {
    assert.instance(err, CleanerError)
    assert.is((err as CleanerError).code, 'ESYS')
    assert.match((err as CleanerError).message, "open '/proc/self/mountinfo': EACCES")
  }
})

test('the real /proc/self/mountinfo parses, and / is in it', () => {
  const table = readMountTable(systemIo)
  assert.ok(table.mounts.length > 0)
  assert.ok(table.mountPoints().has('/'))
  assert.ok(table.mountOf('/proc/self') !== undefined)
})

test.run()

/**
 * Seeded fuzzing of the /proc parsers. /proc text is the kernel's, but mount points and
 * sources carry names chosen by hostile builds, and a parser that throws a TypeError (or
 * silently mis-splits) on odd input would take the whole run down or mis-target a delete.
 * Properties: generated well-formed text parses back to what was generated; mutated or
 * random text either parses or throws CleanerError('EPARSE'), nothing else; escaping
 * round-trips; the mount-table queries hold on random forests (cycles included).
 * Deterministic: the seed is fixed unless FUZZ_SEED is set; failures name seed and case.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CleanerError } from '../../src/errors.js'
import { decodeDev, parseLocks, type LockEntry } from '../../src/locks.js'
import { MountTable, escapeMountPath, parseMountinfo, unescapeMountPath, type Mount } from '../../src/mountinfo.js'
import { isAtOrBelow } from '../../src/paths.js'
import { prng } from '../helpers/random.js'

const SEED = Number(process.env['FUZZ_SEED'] ?? 0x5eed)


class Gen {
  readonly next: () => number
  constructor(seed: number) {
    this.next = prng(seed)
  }
  int(n: number): number {
    return Math.floor(this.next() * n)
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!
  }
  chance(p: number): boolean {
    return this.next() < p
  }
  str(alphabet: readonly string[], max: number, min = 0): string {
    let s = ''
    for (let n = min + this.int(max - min + 1); n > 0; n--) s += this.pick(alphabet)
    return s
  }
}

// Name characters a hostile build can use, several of which the kernel escapes.
const NAME = [...'abcxyz019._-:#', ' ', '\t', '\n', '\\', '\\040', 'é', 'ü', '中', '😀', '\u00a0', '\r']
const NASTY = [...' -:\\\n\t0123456789abcdefx>*<', 'shared:', 'master:', 'EOF', '->', '\\040', '\\9', '中', '\u0000']

function randomPath(g: Gen): string {
  if (g.chance(0.1)) return '/'
  let p = ''
  for (let n = 1 + g.int(4); n > 0; n--) p += '/' + g.str(NAME, 6, 1)
  return p
}

function randomMount(g: Gen, id: number, parentId: number): Mount {
  const shared = g.chance(0.4) ? g.int(100) : undefined
  const master = g.chance(0.3) ? g.int(100) : undefined
  const propagateFrom = master !== undefined && g.chance(0.5) ? g.int(100) : undefined
  const unbindable = g.chance(0.1)
  const optionalFields = [
    ...(shared === undefined ? [] : [`shared:${shared}`]),
    ...(master === undefined ? [] : [`master:${master}`]),
    ...(propagateFrom === undefined ? [] : [`propagate_from:${propagateFrom}`]),
    ...(unbindable ? ['unbindable'] : []),
  ]
  return {
    id,
    parentId,
    major: g.int(300),
    minor: g.int(2 ** 20),
    root: randomPath(g),
    mountPoint: randomPath(g),
    options: g.pick([['rw'], ['ro', 'nosuid'], ['rw', 'relatime', 'nodev']]),
    optionalFields,
    shared,
    master,
    propagateFrom,
    unbindable,
    fsType: g.pick(['ext4', 'tmpfs', 'btrfs', 'fuse.sshfs', 'overlay']),
    source: g.chance(0.1) ? '' : g.str(NAME, 8, 1),
    superOptions: g.pick([['rw'], ['rw', 'size=4k', 'mode=755'], ['ro', 'subvolid=5', 'subvol=/x']]),
  }
}

function mountLine(m: Mount): string {
  return [
    m.id,
    m.parentId,
    `${m.major}:${m.minor}`,
    escapeMountPath(m.root),
    escapeMountPath(m.mountPoint),
    m.options.join(','),
    ...m.optionalFields,
    '-',
    m.fsType,
    escapeMountPath(m.source),
    m.superOptions.join(','),
  ].join(' ')
}

function randomLockEntry(g: Gen): LockEntry {
  const kind = g.pick(['FLOCK', 'POSIX', 'OFDLCK', 'LEASE', 'DELEG', 'ACCESS'])
  const lease = kind === 'LEASE' || kind === 'DELEG'
  return {
    ordinal: 1 + g.int(500),
    kind,
    mode: lease ? g.pick(['ACTIVE', 'BREAKING', 'BREAKER']) : g.pick(['ADVISORY', 'MANDATORY', '*NOINODE*']),
    access: g.pick(['READ', 'WRITE', 'UNLCK']),
    pid: g.chance(0.1) ? g.pick([-1, 0]) : 1 + g.int(4194304),
    major: g.int(4096),
    minor: g.int(2 ** 20),
    inode: g.int(2 ** 40),
    start: String(g.int(1e6)),
    end: g.chance(0.5) ? 'EOF' : String(g.int(1e9)),
    blocked: g.chance(0.2),
  }
}

function lockLine(e: LockEntry, g: Gen): string {
  const hex = (n: number) => n.toString(16).padStart(2, '0')
  const gap = () => ' '.repeat(1 + g.int(3))
  const arrow = e.blocked ? ' '.repeat(g.int(3)) + '-> ' : ''
  return `${e.ordinal}: ${arrow}${e.kind}${gap()}${e.mode}${gap()}${e.access} ${e.pid} ${hex(e.major)}:${hex(e.minor)}:${e.inode} ${e.start} ${e.end}`
}

/** 1–4 random edits: delete a range, insert nasty text, duplicate a slice, truncate. */
function mutate(g: Gen, text: string): string {
  let t = text
  for (let n = 1 + g.int(4); n > 0; n--) {
    const at = g.int(t.length + 1)
    const len = g.int(12)
    switch (g.int(4)) {
      case 0:
        t = t.slice(0, at) + t.slice(at + len)
        break
      case 1:
        t = t.slice(0, at) + g.str(NASTY, 4, 1) + t.slice(at)
        break
      case 2:
        t = t.slice(0, at) + t.slice(at, at + len) + t.slice(at)
        break
      default:
        t = t.slice(0, at)
    }
  }
  return t
}

/** Runs a parser: any outcome but a value or an EPARSE CleanerError fails, naming the case. */
function totalOn<T>(parse: (text: string) => T, text: string, where: string): T | undefined {
  try {
    return parse(text)
  } catch (err) {
    if (err instanceof CleanerError && err.code === 'EPARSE' && /line \d+/.test(err.message)) return undefined
    assert.unreachable(`${where} (FUZZ_SEED=${SEED}): ${String(err)} on ${JSON.stringify(text)}`)
    return undefined
  }
}

const plain = <T extends object>(items: readonly T[]) => items.map((i) => ({ ...i }))

test('mountinfo: generated lines parse back to what was generated', () => {
  const g = new Gen(SEED)
  for (let i = 0; i < 1500; i++) {
    const mounts = Array.from({ length: 1 + g.int(6) }, (_, k) => randomMount(g, 20 + k, 1 + g.int(30)))
    const text = mounts.map(mountLine).join('\n') + (g.chance(0.5) ? '\n' : '')
    assert.equal(plain(parseMountinfo(text)), mounts, `case ${i} (FUZZ_SEED=${SEED}): ${JSON.stringify(text)}`)
  }
})

test('mountinfo: mutated and random text parses or throws EPARSE, nothing else', () => {
  const g = new Gen(SEED + 1)
  for (let i = 0; i < 4000; i++) {
    const mounts = Array.from({ length: 1 + g.int(4) }, (_, k) => randomMount(g, 20 + k, 1 + g.int(30)))
    const text = i % 4 === 3 ? g.str(NASTY, 80) : mutate(g, mounts.map(mountLine).join('\n'))
    const parsed = totalOn(parseMountinfo, text, `mountinfo case ${i}`)
    // what parses is usable: the table queries do not throw on it
    if (parsed) {
      const table = new MountTable(parsed)
      table.deepestFirst(table.mounts)
      table.tops(table.mounts)
      for (const m of parsed) table.mountOf(m.mountPoint)
    }
  }
})

test('/proc/locks: generated lines parse back; mutated and random text parses or throws EPARSE', () => {
  const g = new Gen(SEED + 2)
  for (let i = 0; i < 1500; i++) {
    const entries = Array.from({ length: 1 + g.int(6) }, () => randomLockEntry(g))
    const text = entries.map((e) => lockLine(e, g)).join('\n')
    assert.equal(plain(parseLocks(text)), entries, `case ${i} (FUZZ_SEED=${SEED}): ${JSON.stringify(text)}`)
  }
  for (let i = 0; i < 4000; i++) {
    const entries = Array.from({ length: 1 + g.int(4) }, () => randomLockEntry(g))
    const text = i % 4 === 3 ? g.str(NASTY, 80) : mutate(g, entries.map((e) => lockLine(e, g)).join('\n'))
    totalOn(parseLocks, text, `locks case ${i}`)
  }
})

test('escapeMountPath / unescapeMountPath round-trip; escaped paths hold no separator', () => {
  const g = new Gen(SEED + 3)
  const chars = [...NAME, '/', '\\134', '\\1', '\u{10ffff}', String.fromCharCode(0xd800)]
  for (let i = 0; i < 5000; i++) {
    const p = '/' + g.str(chars, 24)
    const escaped = escapeMountPath(p)
    assert.not.match(escaped, /[ \t\n]/)
    assert.is(unescapeMountPath(escaped), p, `case ${i} (FUZZ_SEED=${SEED}): ${JSON.stringify(p)}`)
    // and inside a whole line, in both path fields
    const [m] = parseMountinfo(`1 0 0:1 ${escaped} ${escaped} rw - tmpfs ${escaped} rw`)
    assert.equal([m!.root, m!.mountPoint, m!.source], [p, p, p])
  }
})

test('decodeDev never throws on 32-bit encodings and inverts makedev', () => {
  const g = new Gen(SEED + 4)
  for (let i = 0; i < 5000; i++) {
    const major = g.int(4096)
    const minor = g.int(2 ** 20)
    // the kernel's new_encode_dev(), which is glibc's makedev() for these ranges
    const dev = ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0
    assert.equal(decodeDev(dev), { major, minor })
  }
})

test('MountTable on random forests: orders, tops and below agree with their definitions', () => {
  const g = new Gen(SEED + 5)
  const paths = ['/', '/a', '/a/b', '/a/b2', '/a/b/c', '/a b', '/x', '/x/y']
  for (let i = 0; i < 400; i++) {
    const n = 1 + g.int(40)
    const cyclic = g.chance(0.2)
    // without cycles a parent has a smaller id (or is missing); with them, anything goes
    const mounts = parseMountinfo(
      Array.from({ length: n }, (_, k) => {
        const id = k + 1
        const parent = cyclic ? 1 + g.int(n + 2) : g.chance(0.1) ? 1000 + k : g.int(id)
        return `${id} ${parent} 0:${id} / ${escapeMountPath(g.pick(paths))} rw - tmpfs t rw`
      }).join('\n'),
    )
    const table = new MountTable(mounts)
    const subset = mounts.filter(() => g.chance(0.6))
    const order = table.deepestFirst(subset)
    assert.equal(order.map((m) => m.id).sort((a, b) => a - b), subset.map((m) => m.id))
    if (!cyclic) {
      const at = new Map(order.map((m, k) => [m.id, k]))
      for (const m of subset) {
        // every ancestor in the subset comes after m
        for (let p = table.byId(m.parentId); p; p = table.byId(p.parentId)) {
          if (at.has(p.id)) assert.ok(at.get(m.id)! < at.get(p.id)!, `case ${i}: ${m.id} before ancestor ${p.id}`)
        }
      }
    }
    const tops = new Set(table.tops(subset).map((m) => m.id))
    const ids = new Set(subset.map((m) => m.id))
    for (const m of subset) if (!ids.has(m.parentId)) assert.ok(tops.has(m.id), `case ${i}: ${m.id} is a top`)
    if (!cyclic) assert.is(tops.size, subset.filter((m) => !ids.has(m.parentId)).length)
    for (const p of paths) {
      assert.equal(table.below(p), mounts.filter((m) => isAtOrBelow(m.mountPoint, p)))
      const file = p === '/' ? '/f' : p + '/f'
      const at = table.mountOf(file)
      const longest = Math.max(...mounts.filter((m) => isAtOrBelow(file, m.mountPoint)).map((m) => m.mountPoint.length))
      assert.is(at?.mountPoint.length, Number.isFinite(longest) ? longest : undefined)
    }
  }
})

test.run()

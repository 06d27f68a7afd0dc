import { test } from 'uvu'
import * as assert from 'uvu/assert'
import type { StatsFs } from 'node:fs'
import { planFreeSpace } from '../../src/free-space.js'
import { systemIo, withIo } from '../../src/io.js'
import type { Decision } from '../../src/plan.js'
import type { ChrootSnapshot } from '../../src/snapshot.js'

const G = 1024 ** 3
const BR = '/srv/archbuild'

function decision(name: string, action: Decision['action'], lastUsed: number, reasons: string[] = ['stale']): Decision {
  const chroot = { path: `${BR}/extra-x86_64/${name}`, buildRoot: BR, lastUsed, mounts: [] } as unknown as ChrootSnapshot
  return { path: chroot.path, action, reasons, chroot }
}

/** An Io whose filesystem has `free()` bytes available. */
function ioWithFree(free: () => number) {
  return withIo(systemIo, { statfs: () => ({ bavail: free() / 4096, bsize: 4096 }) as StatsFs })
}

test('enough free space already: no copy is removed; a copy with leaked mounts is detached instead', () => {
  const ds = [decision('a', 'remove', 1), decision('b', 'remove', 2, ['stale', 'leaked mounts: /x/b/run']), decision('c', 'keep', 3)]
  const plan = planFreeSpace(ioWithFree(() => 80 * G), ds, [BR], 60 * G)
  assert.equal(plan.decisions.map((d) => d.action), ['keep', 'detach', 'keep'])
  assert.match(plan.decisions[0]!.reasons[0]!, /^enough free space: 80\.0 GiB free ≥ min free 60\.0 GiB$/)
  assert.equal(plan.decisions[1]!.reasons.slice(1), ['leaked mounts: /x/b/run'])
})

test('short of space: removals run oldest first, and stop as soon as the target holds', () => {
  let free = 10 * G
  const ds = [decision('young', 'remove', 300), decision('keepme', 'keep', 1), decision('oldest', 'remove', 100), decision('middle', 'remove', 200)]
  const plan = planFreeSpace(ioWithFree(() => free), ds, [BR], 20 * G)
  assert.equal(plan.order.map((d) => d.path.split('/').pop()), ['keepme', 'oldest', 'middle', 'young'])
  assert.match(plan.decisions[0]!.reasons.at(-1)!, /10\.0 GiB free < min free 20\.0 GiB: oldest first/)
  assert.is(plan.beforeRemove(plan.order[1]!), undefined, 'still short: remove the oldest')
  free = 25 * G // the oldest freed enough
  assert.match(plan.beforeRemove(plan.order[2]!) ?? '', /^min free reached: enough free space: 25\.0 GiB/)
  const [report] = plan.report()
  assert.equal([report!.beforeBytes, report!.afterBytes, report!.minFreeBytes], [10 * G, 25 * G, 20 * G])
  assert.match(report!.line, /10\.0 GiB before, 25\.0 GiB after \(min free 20\.0 GiB\)/)
})

test.run()

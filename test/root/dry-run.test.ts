/**
 * The dry run over a build root holding every case, through the real CLI: each decision is
 * asserted, and the tree (with mtimes) and mountinfo are byte-identical before and after.
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as fs from 'node:fs'
import { assertRootSandbox, listing } from '../helpers/sys.js'
import { buildFixture, runCli, type Fixture } from '../helpers/fixture.js'
import { locksText } from '../helpers/build-root.js'

assertRootSandbox()

interface JsonChroot {
  path: string
  kind: string
  action: string
  reasons: string[]
  lastUsed: string | null
  lockHolders: { pid: number; command: string }[]
  users: { pid: number; command: string; how: string }[]
  mounts: string[]
}

let fx: Fixture
test.before(() => {
  fx = buildFixture()
})
test.after(() => fx.cleanup())

test('every case gets the right decision, and the dry run changes nothing', () => {
  const treeBefore = listing(fx.buildRoot)
  const hostBefore = listing(fx.hostRun)
  const mountsBefore = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  const locksBefore = locksText()

  const r = runCli(['--dry-run', '--json', '--build-root', fx.buildRoot])
  assert.is(r.status, 0, r.stderr)

  assert.is(listing(fx.buildRoot), treeBefore, 'tree changed')
  assert.is(listing(fx.hostRun), hostBefore, 'host run dir changed')
  assert.is(fs.readFileSync('/proc/self/mountinfo', 'utf8'), mountsBefore, 'mounts changed')
  assert.is(locksText(), locksBefore, 'locks changed')

  const out = JSON.parse(r.stdout) as { dryRun: boolean; chroots: JsonChroot[]; summary: Record<string, number> }
  assert.is(out.dryRun, true)
  const by = new Map(out.chroots.map((c) => [c.path.slice(fx.buildRoot.length + 1), c]))
  const get = (k: string) => {
    const c = by.get(k)
    assert.ok(c, `no entry for ${k}: ${[...by.keys()].join(', ')}`)
    return c!
  }

  assert.is(get('extra-x86_64/stale').action, 'remove')
  assert.match(get('extra-x86_64/stale').reasons[0]!, /^stale: last used 30d ago/)
  assert.is(get('extra-x86_64/stale').kind, 'copy')
  assert.is(get('multilib-x86_64/old').action, 'remove', 'the second group is cleaned too')

  assert.is(get('extra-x86_64/fresh').action, 'keep')
  assert.match(get('extra-x86_64/fresh').reasons[0]!, /^fresh: last used/)

  const flocked = get('extra-x86_64/flocked')
  assert.is(flocked.action, 'keep')
  assert.equal(flocked.lockHolders.map((h) => h.pid), [fx.pids['flock']])
  assert.match(flocked.reasons[0]!, new RegExp(`^locked by pid ${fx.pids['flock']} \\(flock\\)`))

  const posix = get('extra-x86_64/posixlocked')
  assert.is(posix.action, 'keep', 'a POSIX lock, invisible to an flock probe, still keeps the copy')
  assert.equal(posix.lockHolders.map((h) => h.pid), [fx.pids['posix']])

  const chrooted = get('extra-x86_64/chrooted')
  assert.is(chrooted.action, 'keep')
  assert.ok(chrooted.users.some((u) => u.pid === fx.pids['chrooted'] && u.how === 'root'), JSON.stringify(chrooted.users))

  const otherns = get('extra-x86_64/otherns')
  assert.is(otherns.action, 'keep', 'chrooted from another mount namespace through a bind mount')
  assert.ok(otherns.users.some((u) => u.pid === fx.pids['otherns'] && u.how === 'root'), JSON.stringify(otherns.users))

  const cwd = get('extra-x86_64/cwdinside')
  assert.is(cwd.action, 'keep')
  assert.ok(cwd.users.some((u) => u.pid === fx.pids['cwd'] && u.how === 'cwd'), JSON.stringify(cwd.users))

  const root = get('extra-x86_64/root')
  assert.is(root.kind, 'root')
  assert.is(root.action, 'detach', 'idle root polluted by a leaked /run')
  const rootRun = `${fx.group}/root/run`
  for (const m of [rootRun, `${rootRun}/user/1000`, `${rootRun}/user/1001`, `${rootRun}/user/1002`]) {
    assert.ok(root.mounts.includes(m), `root mounts should list ${m}: ${root.mounts.join(', ')}`)
  }

  const evil = get('extra-x86_64/evil')
  assert.is(evil.action, 'keep')
  assert.equal(evil.reasons, ['symlink: not followed'])

  for (const c of out.chroots) {
    assert.ok(c.path.startsWith('/') && !c.path.includes('//'), `canonical absolute path: ${c.path}`)
    if (c.lastUsed !== null) assert.ok(!Number.isNaN(Date.parse(c.lastUsed)), c.lastUsed)
  }
  assert.is(out.summary['remove'], 2)
  assert.is(out.summary['detach'], 1)
})

test('the human table lists every chroot with action and reasons, and a summary line on stderr', () => {
  const r = runCli(['--dry-run', '--build-root', fx.buildRoot])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stdout, /CHROOT\s+ACTION\s+LAST USED\s+REASONS/)
  assert.match(r.stdout, /extra-x86_64\/stale\s+remove\s+30d ago\s+stale: last used 30d ago/)
  assert.match(r.stdout, /extra-x86_64\/root\s+detach/)
  assert.match(r.stderr, /dry run: \d+ chroots: would remove 2, detach 1, keep \d+/)
})

test('bad build roots are refused with exit 2 before anything is read', () => {
  const link = `${fx.scratch.dir}/rootlink`
  fs.symlinkSync(fx.buildRoot, link)
  const file = `${fx.scratch.dir}/afile`
  fs.writeFileSync(file, '')
  for (const bad of ['/', link, file, `${fx.scratch.dir}/missing`]) {
    const r = runCli(['--dry-run', '--build-root', bad])
    assert.is(r.status, 2, `${bad}: ${r.stderr}`)
    assert.match(r.stderr, /build-cleaner: /)
    assert.is(r.stdout, '')
  }
  const r = runCli(['--dry-run', '--max-age', 'soon', '--build-root', fx.buildRoot])
  assert.is(r.status, 2)
  assert.match(r.stderr, /--max-age must be a duration like "7d".*got "soon"/)
})

test.run()

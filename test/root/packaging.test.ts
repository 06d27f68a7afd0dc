/**
 * The package an admin installs, checked by `npm test`: scripts/check-packaging.sh runs the
 * PKGBUILD's prepare/build/package into a temporary tree, checks the layout, runs the installed
 * command, and verifies the installed systemd units (see the script's header).
 */
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as path from 'node:path'
import { spawnSync } from 'node:child_process'
import { assertRootSandbox } from '../helpers/sys.js'

assertRootSandbox() // package() chowns to root; the dry run of the installed command reads /proc

test('scripts/check-packaging.sh passes: PKGBUILD, package layout, installed command, systemd units', () => {
  const script = path.join(process.cwd(), 'scripts', 'check-packaging.sh')
  const r = spawnSync('bash', [script], { cwd: process.cwd(), encoding: 'utf8', timeout: 180_000 })
  const output = `${r.stdout}${r.stderr}`
  assert.is(r.error, undefined, `could not run ${script}: ${r.error?.message}`)
  assert.is(r.status, 0, `check-packaging.sh failed (status ${r.status ?? r.signal}):\n${output}`)
  assert.match(r.stdout, /^check-packaging: OK$/m)
})

test.run()

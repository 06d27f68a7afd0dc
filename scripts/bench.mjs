#!/usr/bin/env node
// `npm run bench`: build the CLI, then run the benchmarks (TypeScript through tsx) inside a
// private mount namespace so every mount they make stays there.
import { spawnSync } from 'node:child_process'

const build = spawnSync('node', ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' })
if (build.status !== 0) process.exit(build.status ?? 1)
const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'node', '--import', 'tsx', 'bench/main.ts', ...process.argv.slice(2)], {
  stdio: 'inherit',
})
process.exit(r.status ?? 1)

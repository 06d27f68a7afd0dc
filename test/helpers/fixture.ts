/**
 * A realistic build root for integration tests, in a scratch tmpfs inside the test's private
 * mount namespace: every case the planner and executor must tell apart, with real mounts,
 * real locks and real processes.
 */
import * as fs from 'node:fs'
import { spawnSync } from 'node:child_process'
import { scratchTmpfs, sh, type Scratch } from './sys.js'

export interface Fixture {
  readonly scratch: Scratch
  readonly buildRoot: string
  readonly group: string
  readonly hostRun: string
  readonly canary: string
  readonly pids: Record<string, number>
  /** Start a background process (stdio detached) and remember its pid under `name`. */
  spawn(name: string, script: string): number
  cleanup(): void
}

const OLD = '30 days ago'

/**
 * The "host" of seed incident 1: a shared /run-like tmpfs at `hostRun` with the run dirs of
 * users 1000 and 1001 mounted in it (tmpfs each, with a `session` file).
 */
export function mountHostRun(hostRun: string): void {
  sh(`mkdir -p '${hostRun}'
      mount -t tmpfs host-run '${hostRun}'
      mount --make-shared '${hostRun}'
      for u in 1000 1001; do
        mkdir -p '${hostRun}/user/'$u
        mount -t tmpfs user-$u '${hostRun}/user/'$u
        echo "session of $u" > '${hostRun}/user/'$u/session
      done`)
}

/** Makes `dir` a tiny chroot: busybox-static as /bin/busybox and a few applet links. */
export function makeMiniChroot(dir: string): void {
  sh(`mkdir -p '${dir}/bin' '${dir}/build' '${dir}/startdir' '${dir}/etc' '${dir}/run' '${dir}/tmp'
      cp /bin/busybox '${dir}/bin/busybox'
      for a in sh sleep cat; do ln -s busybox '${dir}/bin/'$a; done
      echo "pkgname=demo" > '${dir}/startdir/PKGBUILD'`)
}

export function buildFixture(): Fixture {
  const scratch = scratchTmpfs('bc-fixture-')
  const s = scratch.dir
  const buildRoot = `${s}/archbuild`
  const group = `${buildRoot}/extra-x86_64`
  const hostRun = `${s}/host-run`
  const canary = `${s}/canary`
  const pids: Record<string, number> = {}

  const spawn = (name: string, script: string): number => {
    const out = sh(`setsid bash -c ${JSON.stringify(script)} </dev/null >/dev/null 2>&1 & echo $!`)
    const pid = Number(out.trim())
    pids[name] = pid
    return pid
  }

  mountHostRun(hostRun)
  sh(`mkdir -p '${canary}'; echo precious > '${canary}/keep.txt'`)

  for (const name of ['root', 'stale', 'fresh', 'flocked', 'posixlocked', 'chrooted', 'otherns', 'cwdinside']) {
    makeMiniChroot(`${group}/${name}`)
    fs.writeFileSync(`${group}/${name}.lock`, '')
  }
  makeMiniChroot(`${buildRoot}/multilib-x86_64/old`)
  fs.writeFileSync(`${buildRoot}/multilib-x86_64/old.lock`, '')
  // A symlink where a copy should be: must never be followed.
  fs.symlinkSync(canary, `${group}/evil`)

  // Seed incident 1: the host's shared /run rbind-mounted into root, then a user logs in.
  sh(`mount --rbind '${hostRun}' '${group}/root/run'
      mkdir -p '${hostRun}/user/1002'
      mount -t tmpfs user-1002 '${hostRun}/user/1002'
      echo "session of 1002" > '${hostRun}/user/1002/session'`)

  // Age everything but `fresh`.
  sh(`cd '${buildRoot}'
      for d in extra-x86_64/root extra-x86_64/stale extra-x86_64/flocked extra-x86_64/posixlocked \
               extra-x86_64/chrooted extra-x86_64/otherns extra-x86_64/cwdinside multilib-x86_64/old; do
        touch -h -d '${OLD}' "$d".lock "$d"/* "$d"
      done`)

  spawn('flock', `exec flock '${group}/flocked.lock' sleep 600`)
  spawn('posix', `exec python3 -c 'import fcntl,time; f=open("${group}/posixlocked.lock","r+"); fcntl.lockf(f, fcntl.LOCK_EX); time.sleep(600)'`)
  spawn('chrooted', `exec chroot '${group}/chrooted' /bin/busybox sleep 600`)
  spawn(
    'otherns',
    `exec unshare -m --propagation private sh -c 'mkdir -p ${s}/elsewhere && mount --bind ${group}/otherns ${s}/elsewhere && exec chroot ${s}/elsewhere /bin/busybox sleep 600'`,
  )
  spawn('cwd', `cd '${group}/cwdinside/build' && exec sleep 600`)
  waitFor(() => Object.values(pids).every((pid) => processReady(pid)), 'fixture processes to start')
  const lockInodes = ['flocked', 'posixlocked'].map((n) => fs.statSync(`${group}/${n}.lock`).ino)
  waitFor(() => {
    const locks = fs.readFileSync('/proc/locks', 'utf8')
    return lockInodes.every((ino) => locks.includes(`:${ino} `))
  }, 'the flock and POSIX locks to be taken')
  // Re-age what starting processes may have touched (atime only, but be exact).
  sh(`touch -h -d '${OLD}' '${group}/flocked.lock' '${group}/posixlocked.lock'`)

  return {
    scratch,
    buildRoot,
    group,
    hostRun,
    canary,
    pids,
    spawn,
    cleanup() {
      for (const pid of Object.values(pids)) {
        spawnSync('pkill', ['-KILL', '-s', String(pid)])
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }
      scratch.cleanup()
    },
  }
}

function processReady(pid: number): boolean {
  try {
    const comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
    return comm === 'sleep' || comm === 'busybox' || comm === 'python3' || comm === 'flock'
  } catch {
    return false
  }
}

export function waitFor(check: () => boolean, what: string, timeoutMs = 5000): void {
  const end = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    spawnSync('sleep', ['0.05'])
  }
}

/** argv to run the CLI: the compiled one under build/, or the TypeScript source through tsx. */
export function cliCommand(): string[] {
  return import.meta.url.endsWith('.ts') ? ['--import', 'tsx', 'src/bin.ts'] : ['build/src/bin.js']
}

export function runCli(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync('node', [...cliCommand(), ...args], { encoding: 'utf8', env: { ...process.env, ...env } })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

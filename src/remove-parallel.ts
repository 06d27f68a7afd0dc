/**
 * The one-filesystem remover on several cores (issue 5: a purge must not be slower than
 * `rm -r --one-file-system`). On tmpfs the kernel's unlink is most of the sequential walk and
 * Node adds ~2 µs per entry on top, so only more walkers can beat rm; they are processes (see
 * remove-worker.ts for why, and for how work moves between them without trusting a path).
 *
 * The coordinator is itself a walker: it opens and identifies the root exactly like removeTree
 * and starts walking at once. Helpers come from a pool: one the caller started ahead
 * (startRemoveHelpers: their ~0.1–0.3 s start overlaps the lock and unmount steps, and they
 * serve one removal after the other), or one forked here only if the walk is still going after
 * SPAWN_AFTER_MS, so a small tree never pays for a fork and nothing is walked twice to decide.
 * Between time slices the coordinator routes work: a hungry walker gets a queued task, or one
 * given away by a busy walker (the coordinator itself first, then the helpers, which answer at
 * the end of their slice). The root is removed last, by the coordinator, when every task has
 * come back. The helpers' skips and errors are merged into one result with removeTree's
 * semantics; only their order differs from a sequential walk.
 *
 * A helper that dies while it has work is an error in the result (a bug or a kill); the tasks it
 * had taken are walked again by the others, so the tree is still removed as far as it can be.
 *
 * `options.ops` (the fault-injection seam) runs the sequential walk (removeTreeAsync): faults
 * injected in this process could not reach a helper.
 */
import { fork, type ChildProcess } from 'node:child_process'
import type { Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { openRoot, removeTreeAsync, type RemoveOptions, type RemoveResult, type Removal } from './remove-tree.js'
import { preservingCwd } from './dir-ops.js'
import { isStrictlyBelow } from './paths.js'
import { defaultJobs } from './jobs.js'
import { HELPER_ARG, SLICE_MS, Walker, type FromHelper, type Task, type ToHelper } from './remove-worker.js'

/** Helper processes started ahead of the removals that use them; close them when done. */
export interface RemoveHelpers {
  close(): Promise<void>
}

export interface ParallelOptions extends RemoveOptions {
  /** Walkers in all, the coordinator included (default: the cores, at most 4); 1 walks alone. */
  readonly workers?: number
  /** Helpers from startRemoveHelpers, used instead of forking (then `workers` is not used). One removal at a time. */
  readonly helpers?: RemoveHelpers
  /** Who walks what: one call per task handed out, with the pid of the walker that takes it. */
  readonly onTask?: (t: { readonly path: string; readonly pid: number }) => void
  /** Tests: start the helpers at once and let them take the first tasks before walking. */
  readonly eager?: boolean
  /** Tests (a stress mode): every directory goes through the task queue, not only on demand. */
  readonly splitEveryDirectory?: boolean
}

const SPAWN_AFTER_MS = 20
const STOP_GRACE_MS = 5000
const PROGRESS_MS = 100
const STDERR_KEPT = 2000

const HELPER = fileURLToPath(new URL(import.meta.url.endsWith('.ts') ? './remove-worker.ts' : './remove-worker.js', import.meta.url))

/** Starts `count` helper processes now (default: one per core but one, at most 3). */
export function startRemoveHelpers(count = defaultJobs() - 1): RemoveHelpers {
  return new Pool(Math.max(0, Math.floor(count)))
}

/**
 * Removes the tree at `rootPath` and the root itself, like removeTree (same refusals, same
 * checks, same result), with several walkers. Refusals reject before anything is touched.
 */
export async function removeTreeParallel(rootPath: string, options: ParallelOptions): Promise<RemoveResult> {
  const { workers = defaultJobs(), helpers, onTask, eager, splitEveryDirectory, ...removeOptions } = options
  if (removeOptions.ops !== undefined) return removeTreeAsync(rootPath, removeOptions)
  if (helpers !== undefined && !(helpers instanceof Pool)) throw new TypeError('options.helpers must come from startRemoveHelpers()')
  const tuning: Tuning = { helpers, workers: Math.max(1, Math.floor(workers)), onTask, eager: eager === true, split: splitEveryDirectory === true }
  return new Coordinator(rootPath, removeOptions, tuning).run()
}

interface Tuning {
  readonly helpers: Pool | undefined
  readonly workers: number
  readonly onTask: ParallelOptions['onTask']
  readonly eager: boolean
  readonly split: boolean
}

/** A helper process, as the pool and the removal under way see it. */
interface Helper {
  readonly proc: ChildProcess
  readonly pid: number
  alive: boolean
  booted: boolean
  /** Told to exit, or killed while starting: its end is no news. */
  leaving: boolean
  stderr: string
  /** The removal it was last told to start; the fields below are about that one. */
  gen: number
  /** It has spoken in this removal: it may hold tasks, and its result is awaited. */
  engaged: boolean
  /** It holds work it could give away (its last word on it). */
  busy: boolean
  hungry: boolean
  asked: boolean
  entries: number
  /** Tasks it has taken and not yet reported done, by donor:id. */
  readonly taken: Map<string, Task>
  result: Extract<FromHelper, { t: 'result' }> | undefined
  resultCame: (() => void) | undefined
}

/**
 * Only the flags that load code (a TypeScript loader in tests), never `-e`/`-p` or an inspector
 * port. A package name is resolved here, from this file: the helper starts in '/', not in
 * whatever directory the caller has moved to.
 */
function loaderFlags(argv: readonly string[]): string[] {
  const kept: string[] = []
  const resolved = (spec: string): string => {
    if (/^[./]|^file:/.test(spec)) return spec
    try {
      return import.meta.resolve(spec)
    } catch {
      return spec
    }
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    const eq = /^--(import|loader|experimental-loader)=(.*)$/.exec(a)
    if (eq) kept.push(`--${eq[1]}=${resolved(eq[2]!)}`)
    else if (['--import', '--loader', '--experimental-loader'].includes(a) && i + 1 < argv.length) kept.push(a, resolved(argv[++i]!))
  }
  return kept
}

/** A failed send needs no handling of its own: the helper is gone, and 'close' says so. */
function send(h: Helper, m: ToHelper): void {
  if (h.alive && h.proc.connected) h.proc.send(m, () => {})
}

class Pool implements RemoveHelpers {
  readonly helpers: Helper[] = []
  /** The removal using the helpers now: it hears their messages and their deaths. */
  owner: Coordinator | undefined
  private gen = 0
  private closed = false

  constructor(count: number) {
    for (let i = 0; i < count; i++) this.fork()
  }

  private fork(): void {
    let proc: ChildProcess
    try {
      proc = fork(HELPER, [HELPER_ARG], { cwd: '/', stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: loaderFlags(process.execArgv), serialization: 'json' })
    } catch {
      return // no helper (EAGAIN, ENOMEM): the coordinator walks alone, which is only slower
    }
    if (proc.pid === undefined) {
      proc.on('error', () => {})
      return
    }
    const h: Helper = {
      proc, pid: proc.pid, alive: true, booted: false, leaving: false, stderr: '',
      gen: 0, engaged: false, busy: false, hungry: false, asked: false, entries: 0, taken: new Map(), result: undefined, resultCame: undefined,
    }
    this.helpers.push(h)
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
      if (h.stderr.length < STDERR_KEPT) h.stderr += d.slice(0, STDERR_KEPT - h.stderr.length)
    })
    // Idle helpers never keep this process alive (a pool left open does not hang the CLI's
    // exit: the helpers see their channel close and exit); a removal or close() holds them.
    this.hold(h, false)
    proc.on('message', (message) => {
      const m = message as FromHelper
      if (m.t === 'ready') {
        h.booted = true
        return
      }
      if (m.gen !== h.gen) return // from a removal already over
      if (m.t === 'result') {
        h.result = m
        h.resultCame?.()
        return
      }
      this.owner?.heard(h, m)
    })
    proc.on('error', () => this.gone(h, 'could not be reached'))
    // 'close', not 'exit': only then have all its messages (its result) been delivered.
    proc.on('close', (code, signal) => this.gone(h, `exited with ${signal ?? `code ${code}`}`))
  }

  /** Whether the helper's process, channel and stderr keep this process's event loop alive. */
  private hold(h: Helper, on: boolean): void {
    type Handle = { ref?: () => void; unref?: () => void } | null | undefined
    for (const handle of [h.proc, h.proc.channel as Handle, h.proc.stderr as Partial<Pick<Socket, 'ref' | 'unref'>> | null]) {
      if (on) handle?.ref?.()
      else handle?.unref?.()
    }
  }

  private gone(h: Helper, how: string): void {
    if (!h.alive) return
    h.alive = false
    h.resultCame?.()
    if (!h.leaving) this.owner?.lost(h, how)
  }

  /** A removal takes the helpers: each is told to start it (one still starting reads it once up). */
  attach(owner: Coordinator, init: Omit<Extract<ToHelper, { t: 'init' }>, 't' | 'gen'>): number {
    if (this.owner !== undefined) throw new Error('remove helpers serve one removal at a time')
    this.owner = owner
    const gen = ++this.gen
    for (const h of this.helpers) {
      Object.assign(h, { gen, engaged: false, busy: false, hungry: false, asked: false, entries: 0, result: undefined, resultCame: undefined })
      h.taken.clear()
      this.hold(h, true)
      send(h, { t: 'init', gen, ...init })
    }
    return gen
  }

  /** The removal is over: every helper that took part sends what it recorded (waited for, bounded). */
  async detach(): Promise<void> {
    const waits: Promise<void>[] = []
    for (const h of this.helpers) {
      if (!h.alive || h.gen !== this.gen) continue
      send(h, { t: 'stop', gen: h.gen })
      if (!h.engaged || h.result !== undefined) continue
      waits.push(
        new Promise<void>((resolve) => {
          const timer = setTimeout(() => h.proc.kill('SIGKILL'), STOP_GRACE_MS)
          h.resultCame = () => {
            clearTimeout(timer)
            resolve()
          }
        }),
      )
    }
    await Promise.all(waits)
    for (const h of this.helpers) this.hold(h, false)
    this.owner = undefined
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    const live = this.helpers.filter((h) => h.alive)
    await Promise.all(
      live.map(
        (h) =>
          new Promise<void>((resolve) => {
            h.leaving = true
            this.hold(h, true)
            h.proc.once('close', () => {
              clearTimeout(timer)
              resolve()
            })
            const timer = setTimeout(() => h.proc.kill('SIGKILL'), h.booted ? STOP_GRACE_MS : 0)
            if (h.booted) send(h, { t: 'exit' })
          }),
      ),
    )
  }
}

type Event = { readonly from: Helper | 'self'; readonly m: Exclude<FromHelper, { t: 'ready' | 'result' }> }

const keyOf = (t: Task): string => `${t.donor}:${t.id}`
const pathOf = (t: Task): string => `${t.path}/${typeof t.name === 'string' ? t.name : Buffer.from(t.name.bytes, 'base64').toString('utf8')}`

class Coordinator {
  private pool: Pool | undefined
  private readonly inbox: Event[] = []
  private readonly queue: Task[] = []
  private wake: (() => void) | undefined
  private lastProgress = 0
  private r: Removal | undefined
  private gen = 0

  constructor(
    private readonly rootPath: string,
    private readonly options: RemoveOptions,
    private readonly tuning: Tuning,
  ) {
    this.pool = tuning.helpers
  }

  /** The live helpers taking part in this removal. */
  private get helpers(): Helper[] {
    return this.pool?.helpers.filter((h) => h.alive && h.gen === this.gen) ?? []
  }

  async run(): Promise<RemoveResult> {
    const user = this.options.onProgress
    const options: RemoveOptions = user ? { ...this.options, onProgress: (p) => user({ entries: p.entries + this.helperEntries() }) } : this.options
    const opened = preservingCwd(() => openRoot(this.rootPath, options))
    if (!('removal' in opened)) return opened
    const { removal: r, top, parentFd } = opened
    this.r = r
    const walker = new Walker(
      r,
      (task, blocked) => this.inbox.push({ from: 'self', m: { t: 'done', gen: 0, task, blocked, entries: 0, busy: false } }),
      this.tuning.split ? (task) => this.queue.push(task) : undefined,
    )
    const own = this.pool === undefined
    const poke = (): void => this.wake?.()
    this.options.signal?.addEventListener('abort', poke)
    const started = performance.now()
    let attached = false
    const attach = (): void => {
      attached = true
      this.pool ??= new Pool(this.tuning.workers - 1)
      const mountPoints = [...this.options.mountPoints].filter((mp) => isStrictlyBelow(mp, r.root.path))
      this.gen = this.pool.attach(this, { root: r.root, mountPoints, splitEveryDirectory: this.tuning.split })
    }
    try {
      if (top !== undefined) walker.start(top)
      if (top !== undefined && !r.cancelled && (!own || this.tuning.eager)) attach()
      if (this.tuning.eager) {
        while (this.helpers.some((h) => !h.engaged) && !r.cancelled) await this.sleep()
      }
      while (!walker.idle && !r.cancelled) {
        // Every syscall on the tree happens in here; between slices the cwd is the caller's again.
        preservingCwd(() => {
          this.apply(walker)
          this.distribute(walker)
          if (!walker.busy) return
          walker.work(performance.now() + SLICE_MS)
          if (!walker.busy) this.distribute(walker) // out of work: ask for some before sleeping
        })
        if (!attached && walker.busy && performance.now() - started >= SPAWN_AFTER_MS) attach()
        if (walker.busy) await yieldToLoop()
        else if (!walker.idle && this.inbox.length === 0 && !r.cancelled) await this.sleep()
      }
      if (attached) await this.pool!.detach()
      for (const h of this.pool?.helpers ?? []) if (attached && h.gen === this.gen) this.merge(r, h)
      if (r.cancelled && !r.rootGone) r.cancel()
      return r.result()
    } finally {
      this.options.signal?.removeEventListener('abort', poke)
      if (this.pool?.owner === this) void this.pool.detach() // after a bug: stop them, wait for nothing
      if (own) await this.pool?.close()
      preservingCwd(() => walker.closeAll()) // a no-op unless cancelled or failed
      r.ops.close(parentFd)
    }
  }

  private sleep(): Promise<void> {
    return new Promise<void>((resolve) => (this.wake = resolve)).then(() => void (this.wake = undefined))
  }

  private helperEntries(): number {
    let n = 0
    for (const h of this.helpers) n += h.entries
    return n
  }

  /** A message of this removal from a helper. */
  heard(h: Helper, m: Event['m']): void {
    h.engaged = true
    h.entries = m.entries
    h.busy = m.busy
    // Now, not when applied: were it to die next, these are not walked twice (nor lost).
    if (m.t === 'done') h.taken.delete(keyOf(m.task))
    if (m.t === 'gave') for (const t of m.tasks) h.taken.delete(keyOf(t)) // given back unstarted
    this.inbox.push({ from: h, m })
    this.wake?.()
  }

  /** A helper went away with work in hand: an error, and what it had taken is walked again. */
  lost(h: Helper, how: string): void {
    this.wake?.()
    const r = this.r
    if (r === undefined || !h.engaged || h.result !== undefined) return
    const lines = h.stderr.split('\n').map((l) => l.trim()).filter(Boolean)
    const said = lines.find((l) => /error/i.test(l)) ?? lines[lines.length - 1]
    const message = `remove helper ${h.pid} ${how} before finishing${said ? ` (${said})` : ''}; its subtrees were walked again`
    r.errors.push({ path: r.root.path, syscall: 'fork', code: 'ECHILD', message })
    const dead = (t: Task): boolean => t.donor === h.pid
    const keep = this.queue.filter((t) => !dead(t))
    this.queue.splice(0, this.queue.length, ...[...h.taken.values()].filter((t) => !dead(t)), ...keep)
    h.taken.clear()
  }

  /** Messages since the last slice: done tasks go back to their donor, gifts to the queue. */
  private apply(walker: Walker): void {
    for (let e = this.inbox.shift(); e !== undefined; e = this.inbox.shift()) {
      const { from, m } = e
      if (m.t === 'want' && from !== 'self') from.hungry = true
      else if (m.t === 'gave' && from !== 'self') {
        from.asked = false
        this.queue.push(...m.tasks)
      } else if (m.t === 'done') {
        if (m.task.donor === process.pid) walker.joined(m.task.id, m.blocked)
        else {
          const donor = this.helpers.find((h) => h.pid === m.task.donor)
          if (donor !== undefined) send(donor, { t: 'joined', gen: donor.gen, id: m.task.id, blocked: m.blocked })
        }
      }
    }
    const user = this.options.onProgress
    const now = performance.now()
    if (user && this.r && this.helpers.length > 0 && now - this.lastProgress >= PROGRESS_MS) {
      this.lastProgress = now
      user({ entries: this.r.entries + this.helperEntries() })
    }
  }

  /** Hungry walkers get queued tasks; when there are none, busy walkers give some away. */
  private distribute(walker: Walker): void {
    const hungry = this.helpers.filter((h) => h.hungry)
    const need = hungry.length + (walker.busy ? 0 : 1)
    if (need === 0) return
    if (this.queue.length < need && walker.busy) this.queue.push(...walker.donate(need - this.queue.length))
    for (const h of hungry) {
      const task = this.queue.shift()
      if (task === undefined) break
      h.hungry = false
      h.taken.set(keyOf(task), task)
      this.tuning.onTask?.({ path: pathOf(task), pid: h.pid })
      send(h, { t: 'task', gen: h.gen, task })
    }
    if (!walker.busy && this.queue.length > 0) {
      const task = this.queue.shift()!
      this.tuning.onTask?.({ path: pathOf(task), pid: process.pid })
      walker.take(task)
    }
    const still = this.helpers.filter((h) => h.hungry).length + (walker.busy ? 0 : 1)
    if (still === 0 || this.queue.length > 0) return
    for (const h of this.helpers) {
      const k = still - (h.hungry ? 1 : 0) // a helper asking ahead is not asked to feed itself
      if (h.engaged && h.busy && !h.asked && k > 0) {
        h.asked = true
        send(h, { t: 'ask', gen: h.gen, k })
      }
    }
  }

  private merge(r: Removal, h: Helper): void {
    if (h.result === undefined) return
    r.entries += h.result.entries
    r.skipped.push(...h.result.skipped)
    r.errors.push(...h.result.errors)
  }
}

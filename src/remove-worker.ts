/**
 * One walker of the parallel remover (remove-parallel.ts), and the entry point of its helper
 * processes.
 *
 * Why processes: the remover acts relative to verified directory fds by moving the cwd through
 * /proc/self/fd/N (dir-ops.ts). The cwd belongs to the process and worker_threads cannot chdir;
 * a thread must name `/proc/self/fd/N/name`, which cost +30–45% per unlink on tmpfs here, so two
 * threads walked no faster than one thread with chdir (measured: 1.12 s against 1.06 s for 160k
 * entries), while two processes took 0.90 s. A process starts in 0.1–0.3 s and holds ~6 MB of its
 * own (plus node's ~34 MB of text, shared); a thread would start in ~35 ms.
 *
 * Every walker (the coordinator and each helper) walks depth-first with the per-directory logic
 * of remove-tree.ts (`Removal`): device and mount id checked on every directory entered, the
 * mountinfo mount points, O_NOFOLLOW and the swap-race flips, bounded ENOTEMPTY rescans. A helper
 * therefore has exactly the safety of the sequential remover.
 *
 * Work moves between walkers as tasks: "the entry `name` of the directory that process `donor`
 * holds open as fd `fd`". The taker opens `/proc/<donor>/fd/<fd>` (the very directory object the
 * donor verified; no lookup by name), checks its device, inode and mount id again, then enters
 * `name` like the sequential walk would. A directory whose entries were given away is removed by
 * its own walker only after every task taken from it has come back (join counts), so the root
 * is removed last, by the coordinator. Donations come from the shallowest open directory (the
 * biggest pieces, so few of them) and only between time slices: the walk itself stays synchronous.
 */
import * as fs from 'node:fs'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { Removal, type Frame, type RemoveProblem } from './remove-tree.js'
import { systemDirOps, type EntryName } from './dir-ops.js'
import { errnoOf } from './errors.js'

/** A name on the wire: a string, or the raw bytes (base64) of a name that is not UTF-8. */
export type WireName = string | { readonly bytes: string }

export interface Task {
  /** The process holding the parent directory open. */
  readonly donor: number
  /** Unique within the donor. */
  readonly id: number
  readonly fd: number
  /** The parent's inode, checked by the taker. */
  readonly ino: number
  readonly path: string
  readonly name: WireName
}

export interface RootIdentity {
  readonly path: string
  readonly dev: number
  readonly mountId: number
}

/** Coordinator → helper. `gen` numbers the removal (a helper serves one after the other). */
export type ToHelper =
  | { readonly t: 'init'; readonly gen: number; readonly root: RootIdentity; readonly mountPoints: readonly string[]; readonly splitEveryDirectory: boolean }
  | { readonly t: 'task'; readonly gen: number; readonly task: Task }
  | { readonly t: 'ask'; readonly gen: number; readonly k: number }
  | { readonly t: 'joined'; readonly gen: number; readonly id: number; readonly blocked: boolean }
  | { readonly t: 'stop'; readonly gen: number }
  | { readonly t: 'exit' }

/**
 * Helper → coordinator. `entries` is the helper's running count in removal `gen` (progress);
 * `busy`: it holds work it could give away (a walk under way or a task not started yet).
 */
export type FromHelper =
  | { readonly t: 'ready' }
  | { readonly t: 'want'; readonly gen: number; readonly entries: number; readonly busy: boolean }
  | { readonly t: 'progress'; readonly gen: number; readonly entries: number; readonly busy: boolean }
  | { readonly t: 'done'; readonly gen: number; readonly task: Task; readonly blocked: boolean; readonly entries: number; readonly busy: boolean }
  | { readonly t: 'gave'; readonly gen: number; readonly tasks: readonly Task[]; readonly entries: number; readonly busy: boolean }
  | {
      readonly t: 'result'
      readonly gen: number
      readonly entries: number
      readonly skipped: readonly RemoveProblem[]
      readonly errors: readonly RemoveProblem[]
    }

export const HELPER_ARG = '--build-cleaner-remove-helper'
export const SLICE_MS = 4
const READ_AHEAD = 1024 // entries read from one directory per donation, at most
const PROGRESS_MS = 100
const CHECK_EVERY = 32 // steps between two looks at the clock
const OPEN_HELD = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY // a magic link: following it is the point

const toWire = (name: EntryName): WireName => (typeof name === 'string' ? name : { bytes: name.toString('base64') })
const fromWire = (name: WireName): EntryName => (typeof name === 'string' ? name : Buffer.from(name.bytes, 'base64'))

export class Walker {
  private readonly stack: Frame[] = []
  /** Tasks given away and frames waiting below, per frame: it is removed when this drops to 0. */
  private readonly pending = new Map<Frame, number>()
  /** Listed to the end, fd still open, waiting for `pending`. */
  private readonly deferred = new Set<Frame>()
  /** Frames counted in their parent's `pending`. */
  private readonly holds = new Set<Frame>()
  private readonly donated = new Map<number, Frame>()
  /** Tops of the tasks taken here, with the parent opened through the donor's fd. */
  private readonly tops = new Map<Frame, { task: Task; parent: Frame }>()
  private nextId = 1

  constructor(
    readonly r: Removal,
    private readonly onTaskDone: (task: Task, blocked: boolean) => void,
    /** Stress mode (tests): every directory met is given away at once, through `onGive`. */
    private readonly onGive?: (task: Task) => void,
  ) {}

  /** Something to walk right now. */
  get busy(): boolean {
    return this.stack.length > 0
  }

  /** Nothing open, nothing given away, nothing taken: all done here. */
  get idle(): boolean {
    return this.stack.length === 0 && this.deferred.size === 0 && this.donated.size === 0 && this.tops.size === 0
  }

  start(top: Frame): void {
    this.push(top)
  }

  private push(f: Frame | undefined): void {
    if (f === undefined) return
    this.stack.push(f)
    this.r.list(f)
  }

  /** Takes a task: the donor's directory through its fd, verified, then the entry as the walk would. */
  take(task: Task): void {
    const r = this.r
    let fd: number
    try {
      fd = fs.openSync(`/proc/${task.donor}/fd/${task.fd}`, OPEN_HELD)
    } catch (err) {
      // The donor is gone (it died; its own task is walked again elsewhere): nothing to do here.
      if (errnoOf(err) !== 'ENOENT') r.fail(task.path, 'open', err)
      this.onTaskDone(task, errnoOf(err) !== 'ENOENT')
      return
    }
    const parent: Frame = { fd, parentFd: -1, name: '', path: task.path, ino: task.ino, up: undefined, mountsBelow: true, rescans: 0, cursor: undefined, blocked: false }
    let same: boolean
    try {
      const st = r.ops.fstat(fd)
      same = st.isDirectory && st.dev === r.root.dev && st.ino === task.ino && r.ops.mountId(fd) === r.root.mountId
    } catch (err) {
      r.fail(task.path, 'fstat', err)
      same = false
      parent.blocked = true
    }
    if (!same && !parent.blocked) {
      r.fail(task.path, 'open', { code: 'ESTALE', syscall: 'open' }) // not the directory the donor verified: a bug
      parent.blocked = true
    }
    const top = same ? r.step(parent, fromWire(task.name), 'dir') : undefined
    if (top === undefined) {
      r.ops.close(fd)
      this.onTaskDone(task, parent.blocked)
      return
    }
    this.tops.set(top, { task, parent })
    this.push(top)
  }

  /** Walks until nothing is left to walk, the deadline passes or the removal is cancelled. */
  work(deadline: number): void {
    const r = this.r
    const stack = this.stack
    let steps = 0
    while (stack.length > 0 && !r.cancelled) {
      if (++steps % CHECK_EVERY === 0 && performance.now() >= deadline) return
      const dir = stack[stack.length - 1]!
      const entry = r.next(dir)
      if (entry !== undefined) {
        if (this.onGive !== undefined && entry.type === 'dir') this.onGive(this.give(dir, entry.name))
        else this.push(r.step(dir, entry.name, entry.type))
        continue
      }
      stack.pop()
      if ((this.pending.get(dir) ?? 0) > 0) {
        this.r.endListing(dir)
        this.deferred.add(dir)
        if (dir.up !== undefined && !this.tops.has(dir) && !this.holds.has(dir)) {
          this.pending.set(dir.up, (this.pending.get(dir.up) ?? 0) + 1)
          this.holds.add(dir)
        }
        continue
      }
      r.release(dir)
      this.finish(dir)
    }
  }

  /** Up to `k` tasks, from the shallowest directories still being listed; files met on the way are removed. */
  donate(k: number): Task[] {
    const out: Task[] = []
    const depth = this.stack.length
    for (let i = 0; i < depth && out.length < k; i++) {
      const dir = this.stack[i]!
      for (let budget = READ_AHEAD; budget > 0 && out.length < k && dir.cursor !== undefined; budget--) {
        const entry = this.r.next(dir)
        if (entry === undefined) break
        if (entry.type === 'dir') out.push(this.give(dir, entry.name))
        else this.push(this.r.step(dir, entry.name, entry.type)) // a directory after all: walked here
      }
    }
    return out
  }

  /** A task given away from here has been done by its taker. */
  joined(id: number, blocked: boolean): void {
    const dir = this.donated.get(id)
    if (dir === undefined) throw new Error(`joined: no task ${id} was given away by ${process.pid}`)
    this.donated.delete(id)
    if (blocked) dir.blocked = true
    this.drop(dir)
  }

  /** Closes every fd still open (cancellation, a failure): nothing more is removed. */
  closeAll(): void {
    for (const f of this.stack.splice(0)) this.r.release(f)
    for (const f of this.deferred) this.r.release(f)
    this.deferred.clear()
    for (const { parent } of this.tops.values()) this.r.ops.close(parent.fd)
    this.tops.clear()
  }

  private give(dir: Frame, name: EntryName): Task {
    const id = this.nextId++
    this.donated.set(id, dir)
    this.pending.set(dir, (this.pending.get(dir) ?? 0) + 1)
    return { donor: process.pid, id, fd: dir.fd, ino: dir.ino, path: dir.path, name: toWire(name) }
  }

  /** rmdir through the parent; a rescan goes back on the stack in the same place of the join counts. */
  private finish(dir: Frame): void {
    const again = this.r.finish(dir)
    if (again === undefined) return this.settled(dir)
    if (this.holds.delete(dir)) this.holds.add(again)
    const top = this.tops.get(dir)
    if (top !== undefined) {
      this.tops.delete(dir)
      this.tops.set(again, top)
    }
    this.push(again)
  }

  /** `dir` is removed, or failed for good: tell whoever waits for it. */
  private settled(dir: Frame): void {
    const top = this.tops.get(dir)
    if (top !== undefined) {
      this.tops.delete(dir)
      this.r.ops.close(top.parent.fd)
      this.onTaskDone(top.task, top.parent.blocked)
    }
    if (this.holds.delete(dir)) this.drop(dir.up!)
  }

  /** One thing `dir` waited for is done; a deferred directory with nothing left to wait for is removed. */
  private drop(dir: Frame): void {
    const left = (this.pending.get(dir) ?? 0) - 1
    if (left > 0) {
      this.pending.set(dir, left)
      return
    }
    this.pending.delete(dir)
    if (!this.deferred.delete(dir)) return // still being listed: removed when its listing ends
    this.r.release(dir)
    this.finish(dir)
  }
}

/** The helper's side of the channel: messages in arrival order, and a wait for the next one. */
class Inbox {
  private readonly queue: ToHelper[] = []
  private wake: (() => void) | undefined
  constructor() {
    process.on('message', (m) => {
      this.queue.push(m as ToHelper)
      this.wake?.()
    })
  }
  shift(): ToHelper | undefined {
    return this.queue.shift()
  }
  unshift(m: ToHelper): void {
    this.queue.unshift(m)
  }
  /** Resolves once a message is waiting. */
  async any(): Promise<void> {
    while (this.queue.length === 0) await new Promise<void>((resolve) => (this.wake = resolve))
    this.wake = undefined
  }
  async next(): Promise<ToHelper> {
    await this.any()
    return this.queue.shift()!
  }
}

const send = (m: FromHelper): void => void process.send!(m)

/**
 * One removal in a helper: takes tasks, walks them in time slices, gives work away when asked,
 * and sends everything it recorded when told to stop. Messages of other removals are stale.
 */
async function serveRemoval(inbox: Inbox, init: Extract<ToHelper, { t: 'init' }>): Promise<'stopped' | 'exit'> {
  const gen = init.gen
  const r = new Removal(systemDirOps, init.root, { mountPoints: new Set(init.mountPoints) })
  const queue: Task[] = []
  const state = () => ({ gen, entries: r.entries, busy: walker.busy || queue.length > 0 })
  const walker: Walker = new Walker(
    r,
    (task, blocked) => send({ t: 'done', task, blocked, ...state() }),
    init.splitEveryDirectory ? (task) => send({ t: 'gave', tasks: [task], ...state() }) : undefined,
  )
  let wanting = false
  let told = performance.now()
  for (;;) {
    for (let m = inbox.shift(); m !== undefined; m = inbox.shift()) {
      if (m.t === 'exit') {
        walker.closeAll()
        return 'exit'
      }
      if (m.t === 'init') {
        // A new removal: the coordinator is done with this one (it never is without a stop first).
        walker.closeAll()
        inbox.unshift(m)
        return 'stopped'
      }
      if (m.gen !== gen) continue
      if (m.t === 'task') {
        queue.push(m.task)
        wanting = false
      } else if (m.t === 'ask') {
        // Tasks not started yet go back first: they are whole pieces, and nothing was read for them.
        const back = queue.splice(0, m.k)
        const tasks = [...back, ...walker.donate(m.k - back.length)]
        send({ t: 'gave', tasks, ...state() })
      }
      else if (m.t === 'joined') walker.joined(m.id, m.blocked)
      else {
        walker.closeAll()
        send({ t: 'result', gen, entries: r.entries, skipped: r.skipped, errors: r.errors })
        return 'stopped'
      }
    }
    if (!walker.busy && queue.length > 0) walker.take(queue.shift()!)
    // Ask for the next task while this one is still being walked: the answer comes back between
    // two of the coordinator's slices, and this walker should not sit idle meanwhile.
    if (!wanting && queue.length === 0) {
      send({ t: 'want', ...state() })
      wanting = true
    }
    if (walker.busy) {
      walker.work(performance.now() + SLICE_MS)
      if (performance.now() - told >= PROGRESS_MS) {
        told = performance.now()
        send({ t: 'progress', ...state() })
      }
      await yieldToLoop()
      continue
    }
    await inbox.any()
  }
}

/** A helper process: serves removals one after the other until told to exit; exits with its coordinator. */
async function serve(): Promise<void> {
  const inbox = new Inbox()
  let leaving = false
  process.on('disconnect', () => leaving || process.exit(1)) // the coordinator is gone: so are we
  // Ctrl-C and systemd's stop signal the whole group: the coordinator turns them into a clean
  // stop between two steps (its AbortSignal), and stops us with the rest.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => {})
  send({ t: 'ready' })
  for (;;) {
    const m = await inbox.next()
    if (m.t === 'exit') break
    if (m.t !== 'init') continue // a removal that was stopped before it reached us
    if ((await serveRemoval(inbox, m)) === 'exit') break
  }
  leaving = true
  process.disconnect()
}

if (process.argv[2] === HELPER_ARG && process.send !== undefined) {
  serve().catch((err: unknown) => {
    process.stderr.write(`remove helper ${process.pid}: ${(err as Error)?.stack ?? String(err)}\n`)
    process.exit(70)
  })
}

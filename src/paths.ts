/**
 * Path comparison on `/` boundaries. Paths handled here are absolute and already
 * canonical (no `.`, `..`, doubled or trailing slashes), as the kernel reports them.
 */

/** True when `path` is `dir` itself or lies below it: `/a/user` is not inside `/a/user2`. */
export function isAtOrBelow(path: string, dir: string): boolean {
  if (dir === '/') return path.startsWith('/')
  return path === dir || (path.startsWith(dir) && path.charCodeAt(dir.length) === 0x2f /* / */)
}

/** True when `path` lies strictly below `dir`. */
export function isStrictlyBelow(path: string, dir: string): boolean {
  return path !== dir && isAtOrBelow(path, dir)
}

/** Number of components: `/` is 0, `/a/b` is 2. Used to order mounts deepest-first. */
export function depthOf(path: string): number {
  if (path === '/') return 0
  let n = 0
  for (let i = 0; i < path.length; i++) if (path.charCodeAt(i) === 0x2f) n++
  return n
}

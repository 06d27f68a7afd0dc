#!/usr/bin/env bash
# `npm run demo` (root, Linux): a realistic polluted build root in a private mount namespace on
# a scratch tmpfs; shows the dry-run plan, runs the clean, shows the result and proves that the
# host-side mounts and files survived. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "demo: needs root (it makes mounts, in a private namespace)" >&2; exit 2; fi
if [ -z "${BC_DEMO_INNER:-}" ]; then
  node node_modules/typescript/bin/tsc -p tsconfig.json
  exec env BC_DEMO_INNER=1 unshare -m --propagation private bash "$0" "$@"
fi

cli=(node "$PWD/dist/bin.js")
s=$(mktemp -d /tmp/build-cleaner-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do pkill -KILL -s "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
  umount -R -l "$s" 2>/dev/null || true
  rmdir "$s" 2>/dev/null || true
}
trap cleanup EXIT
mount -t tmpfs demo "$s"
mount --make-private "$s"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

br="$s/var/lib/archbuild"; g="$br/extra-x86_64"; run="$s/run"
say "the host: a shared /run with two logged-in users, and a system D-Bus socket"
mkdir -p "$run"; mount -t tmpfs run "$run"; mount --make-shared "$run"
for u in 1000 1001; do mkdir -p "$run/user/$u"; mount -t tmpfs "user-$u" "$run/user/$u"; echo "session of $u" > "$run/user/$u/session"; done
mkdir -p "$run/dbus"
node -e 'require("net").createServer().listen(process.argv[1], () => setTimeout(() => {}, 1e9))' "$run/dbus/system_bus_socket" &
pids+=($!); disown
while [ ! -S "$run/dbus/system_bus_socket" ]; do sleep 0.05; done

say "the build root: $br"
for c in root alice bob carol dave erin; do
  mkdir -p "$g/$c"/{usr/bin,build,startdir,run,tmp}; echo "#!/bin/sh" > "$g/$c/usr/bin/tool"; : > "$g/$c.lock"
done
head -c 4M /dev/urandom > "$g/bob/build/pkg.tar.zst"
# seed incident 1: the host's /run leaked into root while it was being created; a user logs in later
mount --rbind "$run" "$g/root/run"
mkdir -p "$run/user/1002"; mount -t tmpfs user-1002 "$run/user/1002"; echo "session of 1002" > "$run/user/1002/session"
# seed incident 2: a stale copy with the host's /run mounted inside
mount --bind "$run" "$g/alice/run"
for c in root alice bob carol dave; do touch -h -d '12 days ago' "$g/$c" "$g/$c"/* "$g/$c.lock"; done
# carol: a build holds her lock; dave: a shell sits in his copy
setsid flock "$g/carol.lock" sleep 600 & pids+=($!); disown
(cd "$g/dave/build" && exec sleep 600) & pids+=($!); disown
sleep 0.3
findmnt -R -o TARGET,FSTYPE,PROPAGATION "$s" | sed "s#$s##"

say "build-cleaner --dry-run"
"${cli[@]}" --dry-run --build-root "$br" 2>/dev/null | sed "s#$s##g"

say "build-cleaner (the real run)"
rc=0
"${cli[@]}" --build-root "$br" --run-lock "$s/build-cleaner.lock" | sed "s#$s##g" || rc=$?

say "afterwards"
ls -1 "$g" | sed 's/^/  /'
ok=1
check() { if eval "$2"; then echo "  ok: $1"; else echo "  FAILED: $1"; ok=0; fi; }
check "exit status 0" '[ "${PIPESTATUS[0]:-$rc}" = 0 ] && [ $rc = 0 ]'
check "stale copies alice and bob are gone" '[ ! -e "$g/alice" ] && [ ! -e "$g/bob" ]'
check "the locked copy (carol), the busy one (dave) and the fresh one (erin) are kept" '[ -d "$g/carol/usr" ] && [ -d "$g/dave/usr" ] && [ -d "$g/erin/usr" ]'
check "root keeps its files and has no mounts left" '[ -f "$g/root/usr/bin/tool" ] && ! findmnt -R "$g/root" >/dev/null'
for u in 1000 1001 1002; do
  check "host /run/user/$u still mounted with its session" 'mountpoint -q "$run/user/$u" && grep -q "session of $u" "$run/user/$u/session"'
done
check "the host's D-Bus socket survived" '[ -S "$run/dbus/system_bus_socket" ]'
check "every lock file is still there" '[ -f "$g/alice.lock" ] && [ -f "$g/bob.lock" ] && [ -f "$g/root.lock" ]'
[ $ok = 1 ] && say "demo passed: nothing outside the stale copies was touched" || { say "demo FAILED"; exit 1; }

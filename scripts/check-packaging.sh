#!/usr/bin/env bash
# CI check of what an admin installs: the Arch package and the systemd units, as shipped.
#
# 1. The PKGBUILD parses and agrees with package.json (name, version, dependencies).
# 2. Its real prepare(), build() and package() run as makepkg would run them (makepkg itself is
#    not on Debian), into a temporary $pkgdir, offline (see the one stand-in below).
# 3. The resulting file layout is checked (runtime dependencies exactly as package-lock.json
#    pins them, no devDependencies), and the installed /usr/bin/build-cleaner runs.
# 4. The *installed* unit files are checked with `systemd-analyze verify --root`, which
#    resolves ExecStart= inside the package tree (a unit naming a missing binary fails), with
#    the host's targets (sysinit.target, timers.target…) beside them. Any warning fails too.
# 5. The service must not gain a setting that gives it its own mount namespace: its unmounts
#    would then never reach the host's leaked mounts (see the comment in the unit).
#
# Needs: bash, node + npm (after `npm ci`), GNU tar, systemd-analyze (Debian: systemd). ~15 s.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pkgbuild="$root/packaging/archlinux/PKGBUILD"
work="$(mktemp -d "${TMPDIR:-/tmp}/bc-packaging.XXXXXX")"
trap 'rm -rf -- "$work"' EXIT

fail() {
  echo "check-packaging: FAIL: $*" >&2
  exit 1
}
step() { echo "== $*"; }

step 'PKGBUILD: syntax and metadata'
bash -n "$pkgbuild" || fail "bash -n $pkgbuild"
version="$(node -p 'require(process.argv[1]).version' "$root/package.json")"
(
  # shellcheck source=/dev/null
  source "$pkgbuild"
  [[ $pkgname == build-cleaner ]] || fail "pkgname is '$pkgname'"
  [[ $pkgver == "$version" ]] || fail "PKGBUILD pkgver $pkgver differs from package.json version $version"
  [[ " ${arch[*]} " == *' any '* ]] || fail 'arch must be any (no native code)'
  for dep in nodejs util-linux; do
    [[ " ${depends[*]} " == *" $dep"* ]] || fail "depends lacks $dep"
  done
  [[ " ${optdepends[*]} " == *'btrfs-progs:'* ]] || fail 'optdepends lacks btrfs-progs'
  [[ -z ${backup+set} ]] || fail 'backup=() set, but the package installs nothing into /etc'
  declare -F prepare build package >/dev/null || fail 'prepare(), build() and package() must all exist'
)

step 'PKGBUILD: prepare, build, package (as makepkg runs them, with errexit)'
srcdir="$work/src"
pkgdir="$work/pkg"
mkdir -p "$srcdir" "$pkgdir"
[[ -d $root/node_modules/typescript ]] || fail "no $root/node_modules: run \`npm ci\` first"
[[ -f $root/LICENSE ]] || fail "no LICENSE in $root: the package installs the license text (license=('MIT') needs it in /usr/share/licenses/build-cleaner/)"
# A new bash, not a subshell: errexit must hold inside the PKGBUILD functions, as under makepkg
# (a subshell on the left of || would silently ignore every failing command).
# The one stand-in: `npm ci` (the download step) copies the checkout's node_modules, which
# `npm ci` installed from the same package-lock.json. A real `npm ci --offline` cannot be
# relied on here: the lockfile may omit "resolved" URLs (omit-lockfile-registry-resolved), and
# then npm needs registry metadata that no cache is guaranteed to hold. Every other step, npm
# run build, npm prune, npm pack and all of package(), runs for real, and offline.
startdir="$root/packaging/archlinux" srcdir="$srcdir" pkgdir="$pkgdir" PKGBUILD_FILE="$pkgbuild" \
  CHECKOUT_NODE_MODULES="$root/node_modules" npm_config_offline=true npm_config_update_notifier=false \
  npm_config_loglevel=warn npm_config_audit=false npm_config_fund=false \
  bash -euo pipefail -c '
    npm() {
      if [[ ${1:-} == ci ]]; then
        mkdir node_modules
        cp -a "$CHECKOUT_NODE_MODULES/." node_modules/
        return
      fi
      command npm "$@"
    }
    source "$PKGBUILD_FILE"
    for fn in prepare build package; do
      cd "$srcdir"
      "$fn"
    done
  ' >"$work/makepkg.log" 2>&1 || {
  cat "$work/makepkg.log" >&2
  fail 'the PKGBUILD functions failed (log above)'
}

step 'package layout'
have() { [[ -e $pkgdir/$1 || -L $pkgdir/$1 ]] || fail "missing from the package: /$1"; }
same() { cmp -s "$pkgdir/$1" "$root/$2" || fail "/$1 differs from $2"; }
mod=usr/lib/node_modules/build-cleaner
have usr/bin/build-cleaner
[[ -L $pkgdir/usr/bin/build-cleaner ]] || fail '/usr/bin/build-cleaner should be a link to the module'
[[ $(readlink "$pkgdir/usr/bin/build-cleaner") != /* ]] || fail '/usr/bin/build-cleaner links to an absolute path (into $pkgdir?)'
[[ -x $pkgdir/usr/bin/build-cleaner ]] || fail '/usr/bin/build-cleaner does not resolve to an executable inside the package'
have "$mod/dist/bin.js"
have "$mod/package.json"
for dev in typescript tsx uvu esbuild @types/node @types/ms; do
  [[ ! -e $pkgdir/$mod/node_modules/$dev ]] || fail "devDependency $dev was installed"
done
# the runtime dependencies are the ones package-lock.json pins, which the tests ran with
node -e '
  const [lockFile, modules] = process.argv.slice(1)
  const lock = require(lockFile).packages
  const fs = require("node:fs")
  const deps = Object.keys(lock[""].dependencies ?? {})
  if (deps.length === 0) throw new Error("no runtime dependencies in package-lock.json?")
  for (const [key, entry] of Object.entries(lock)) {
    if (!key || entry.dev) continue
    if (entry.optional && !fs.existsSync(`${modules}/${key}`)) continue // built for another platform
    const installed = JSON.parse(fs.readFileSync(`${modules}/${key}/package.json`, "utf8")).version
    if (installed !== entry.version) throw new Error(`${key}: packaged ${installed}, lockfile pins ${entry.version}`)
  }
' "$root/package-lock.json" "$pkgdir/$mod" || fail 'the packaged dependencies differ from package-lock.json'
have usr/lib/systemd/system/build-cleaner.service
have usr/lib/systemd/system/build-cleaner.timer
same usr/lib/systemd/system/build-cleaner.service units/build-cleaner.service
same usr/lib/systemd/system/build-cleaner.timer units/build-cleaner.timer
same usr/share/doc/build-cleaner/build-cleaner.json.example packaging/build-cleaner.json
same usr/share/doc/build-cleaner/README.md README.md
have usr/share/doc/build-cleaner/CHANGELOG.md
have usr/share/licenses/build-cleaner/LICENSE
top="$(cd "$pkgdir" && find . -mindepth 1 -maxdepth 1 | sort | tr '\n' ' ')"
[[ $top == './usr ' ]] || fail "the package installs outside /usr: $top(nothing may go to /etc: the config stays the admin's)"
leaks="$(grep -rlF -- "$work" "$pkgdir" || true)"
[[ -z $leaks ]] || fail "files refer to the build directories: $leaks"
odd="$(find "$pkgdir" \( ! -user root -o ! -group root -o \( ! -type l -perm -o+w \) \) -print | head -5)"
[[ -z $odd ]] || fail "not root-owned, or world-writable: $odd"

step 'the installed command runs'
out="$("$pkgdir/usr/bin/build-cleaner" --version)" || fail 'build-cleaner --version failed'
[[ $out == "build-cleaner $version" ]] || fail "--version printed '$out'"
"$pkgdir/usr/bin/build-cleaner" --help >/dev/null || fail 'build-cleaner --help failed'
mkdir "$work/empty-build-root"
"$pkgdir/usr/bin/build-cleaner" --dry-run --build-root "$work/empty-build-root" >"$work/dry-run.log" 2>&1 || {
  cat "$work/dry-run.log" >&2
  fail 'a dry run of an empty build root failed'
}

step 'systemd-analyze verify of the installed units'
vroot="$work/verify-root"
mkdir -p "$vroot/usr/lib/systemd/system"
cp -a /usr/lib/systemd/system/. "$vroot/usr/lib/systemd/system/" # the host's targets, for the dependencies
cp -a "$pkgdir/." "$vroot/"                                        # the package, as installed
verify() { (cd / && systemd-analyze verify --root="$vroot" build-cleaner.service build-cleaner.timer 2>&1); }
if ! out="$(verify)" || [[ -n $out ]]; then
  echo "$out" >&2
  fail 'systemd-analyze verify (any warning counts)'
fi
# the control: verify --root does look for ExecStart= inside the package tree
mv "$vroot/usr/bin/build-cleaner" "$vroot/usr/bin/build-cleaner.away"
if out="$(verify)"; then fail "verify --root accepted a missing /usr/bin/build-cleaner: the check above proves nothing ($out)"; fi
mv "$vroot/usr/bin/build-cleaner.away" "$vroot/usr/bin/build-cleaner"

step 'the service keeps the host mount namespace'
forbidden='Private(Tmp|Devices|Mounts|Network|IPC|PIDs|Users|BPF)|Protect(System|Home|KernelTunables|KernelModules|KernelLogs|ControlGroups|Proc|Clock|Hostname)|ProcSubset|(ReadWrite|ReadOnly|Inaccessible|Exec|NoExec)Paths|Bind(ReadOnly)?Paths|TemporaryFileSystem|Root(Directory|Image|Ephemeral)|MountImages|Extension(Images|Directories)|MountFlags|MountAPIVFS|LogNamespace|NetworkNamespacePath|IPCNamespacePath|JoinsNamespaceOf|DynamicUser|(State|Cache|Logs|Runtime|Configuration)Directory'
bad="$(grep -nE "^[[:space:]]*($forbidden)[[:space:]]*=" "$root/units/build-cleaner.service" || true)"
[[ -z $bad ]] || fail "units/build-cleaner.service must not create a mount namespace: $bad"
grep -qx 'ExecStart=/usr/bin/build-cleaner' "$root/units/build-cleaner.service" || fail 'ExecStart= is not /usr/bin/build-cleaner'

echo 'check-packaging: OK'

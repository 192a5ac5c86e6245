#!/usr/bin/env bash
# `./dev test-compat`: the suite in a Debian 13 "trixie" chroot (GDB 16, Python 3.13,
# glibc 2.41) that this script makes itself, as root, with debootstrap.
# `GDBCKPT_COMPAT_SUITE=jammy ./dev test-compat`: the same in Ubuntu 22.04 (GDB 12.1,
# Python 3.10, glibc 2.35), the oldest of the support matrix.
#
# The root is made once and kept under /var/tmp/gdbckpt-SUITE ($GDBCKPT_COMPAT_ROOT):
# debootstrap --variant=minbase, then apt installs what `./dev test` needs. A marker file
# written last records that it is complete (and with which packages); a root without it,
# left by an interrupted run, is removed and made again. Each run copies the checkout's
# files (git ls-files -co --exclude-standard: tracked and untracked-but-not-ignored, so no
# .venv and no build outputs) afresh to /src in the root, mounts the root onto itself (so
# that mountinfo inside shows "/"), /proc, /sys and /dev (with /dev/pts and /dev/shm), runs
# `cd /src && ./dev test` there and exits with its status. On exit, failure, Ctrl-C or
# SIGTERM the processes left in the root are ended and everything mounted under it is
# unmounted.
#
# Environment: GDBCKPT_COMPAT_SUITE (trixie or jammy), GDBCKPT_COMPAT_ROOT (where the root
# lives), GDBCKPT_COMPAT_MIRROR (a Debian mirror, http://deb.debian.org/debian by default; an
# Ubuntu one, http://archive.ubuntu.com/ubuntu, for jammy). Ubuntu's archive key comes from
# that archive's ubuntu-keyring package when the host has no ubuntu-archive-keyring.gpg
# (Debian 12 packages none); it is then as trusted as the mirror it came from. PIP_* and proxy variables, /etc/pip.conf
# and the host's extra CA certificates (/usr/local/share/ca-certificates) are carried into
# the root so that pip reaches PyPI there as it does here.
set -euo pipefail

suite=${GDBCKPT_COMPAT_SUITE:-trixie}
case "$suite" in
  trixie) distro=debian; default_mirror=http://deb.debian.org/debian;;
  jammy) distro=ubuntu; default_mirror=http://archive.ubuntu.com/ubuntu;;
  *) echo "test-compat: GDBCKPT_COMPAT_SUITE is trixie or jammy, not '$suite'" >&2; exit 2;;
esac
mirror=${GDBCKPT_COMPAT_MIRROR:-$default_mirror}
root=${GDBCKPT_COMPAT_ROOT:-/var/tmp/gdbckpt-$suite}
# What ./dev, the Makefile and the tests use: the compilers and GDB, Python with venv,
# setpriv/unshare/ipcs (util-linux), mount, mkfs.ext4, the servers the tests save and
# restore, ps/pgrep, ip/ss, and libc6-dbg as on the Debian 12 machines (GDB recommends it).
packages=(gcc make gdb python3 python3-venv libc6-dev libc6-dbg util-linux mount e2fsprogs
  redis-server nodejs procps iproute2 ca-certificates netbase)

die() { echo "test-compat: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and mounts): run as root or with sudo"
[ "$(uname -m)" = x86_64 ] || die "needs an x86-64 machine (uname -m says $(uname -m))"
repo=$(cd "$(dirname "$0")/.." && pwd)
git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
  || die "$repo is not a git checkout (the files to copy come from git ls-files)"

case "$root" in /*) ;; *) die "GDBCKPT_COMPAT_ROOT must be an absolute path, not '$root'";; esac
root=${root%/}
[ -n "$root" ] && [ "$root" != / ] || die "GDBCKPT_COMPAT_ROOT must not be /"
mkdir -p "$(dirname "$root")" || die "cannot make $(dirname "$root")"
root="$(cd "$(dirname "$root")" && pwd -P)/$(basename "$root")"
marker="$root/.gdbckpt-compat-complete"
log="$root.log"

# One run at a time per root.
exec 9>"$root.lock" || die "cannot open $root.lock"
command -v flock >/dev/null || die "flock (util-linux) is missing"
flock -n 9 || die "another test-compat run is using $root ($root.lock is held)"

# Mount points under the root, deepest first (from /proc/self/mountinfo; \040 is a space).
mounts_under_root() {
  awk -v r="$root" '{ m = $5; gsub(/\\040/, " ", m); if (m == r || index(m, r "/") == 1) print m }' \
    /proc/self/mountinfo | sort -r
}

# The processes whose root directory is the chroot: everything this script started there
# (pytest, GDB, restored programs, redis-server, node...).
procs_in_root() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"
  done
  return 0
}

end_procs_in_root() {
  local pids i
  pids=$(procs_in_root)
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 50); do
    pids=$(procs_in_root)
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  sleep 0.2
}

unmount_all() {
  local m left
  while read -r m; do
    [ -n "$m" ] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(mounts_under_root)
  left=$(mounts_under_root)
  [ -z "$left" ] || { echo "test-compat: still mounted: $(echo $left)" >&2; return 1; }
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "${child:-}" ]; then
    # A set-up step leads its own process group; the test run does not.
    kill -TERM -- -"$child" 2>/dev/null || kill -TERM "$child" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 -- -"$child" 2>/dev/null || kill -0 "$child" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- -"$child" 2>/dev/null || kill -KILL "$child" 2>/dev/null || true
  fi
  end_procs_in_root
  unmount_all || rc=1
  exit "$rc"
}
child=
trap cleanup EXIT
trap 'echo "test-compat: interrupted" >&2; exit 130' INT
trap 'echo "test-compat: terminated" >&2; exit 143' TERM HUP

# A run ended by SIGKILL (or a crash) can leave its mounts and processes behind.
end_procs_in_root
unmount_all || die "cannot unmount what an earlier run left mounted under $root"

mount_all() {
  # The root bound onto itself is a mount point: inside, /proc/*/mountinfo then shows "/"
  # (with its device), as on a machine, not only the mounts below it.
  mount --bind "$root" "$root" && mount --make-private "$root" \
    || die "cannot bind $root onto itself"
  mount -t proc proc "$root/proc" || die "cannot mount /proc in $root"
  mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys" \
    || die "cannot bind /sys into $root"
  # /dev with what is mounted under it: /dev/pts, /dev/shm (and the loop devices the
  # filesystem-cutting test uses).
  mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" \
    || die "cannot bind /dev into $root"
  [ -e "$root/dev/pts/ptmx" ] || die "no /dev/pts in $root after binding /dev"
  if ! mountpoint -q "$root/dev/shm"; then
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm" \
      || die "cannot mount /dev/shm in $root"
  fi
}

# A command in the root, with a clean environment (step needs it as a command, not a function).
root_env=(chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
in_root() { "${root_env[@]}" "$@"; }

# Runs a set-up step with its output in the log; on failure one line says what failed.
step() {
  local what=$1; shift
  echo "test-compat: $what" >&2
  echo "=== $what" >>"$log"
  # In its own process group, waited for in the background: INT and TERM reach the traps
  # at once, and cleanup ends the whole group (debootstrap's wget, dpkg...).
  local rc=0
  setsid "$@" >>"$log" 2>&1 </dev/null &
  child=$!
  wait "$child" || rc=$?
  child=
  [ "$rc" -eq 0 ] || die "$what failed (last line: $(tail -n 1 "$log"); whole output in $log)"
}

# Host settings the chroot needs for the network: DNS, hosts, extra CAs (a TLS-inspecting
# proxy's), pip's configuration.
copy_host_settings() {
  cp -L --remove-destination /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null \
    || die "cannot copy /etc/resolv.conf into $root"
  [ -e "$root/etc/hosts" ] || cp -L /etc/hosts "$root/etc/hosts" || die "cannot copy /etc/hosts"
  if [ -d /usr/local/share/ca-certificates ] \
     && [ -n "$(ls -A /usr/local/share/ca-certificates 2>/dev/null)" ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -rL /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" \
      || die "cannot copy CA certificates into $root"
    if [ -x "$root/usr/sbin/update-ca-certificates" ]; then
      in_root update-ca-certificates >>"$log" 2>&1 || die "update-ca-certificates failed in $root"
    fi
  fi
  if [ -f /etc/pip.conf ]; then
    cp -L /etc/pip.conf "$root/etc/pip.conf" || die "cannot copy /etc/pip.conf into $root"
  else
    rm -f "$root/etc/pip.conf"
  fi
}

# Ubuntu's archive key: the host's, or the one in the archive's ubuntu-keyring package.
ubuntu_keyring() {
  ubuntu_key=/usr/share/keyrings/ubuntu-archive-keyring.gpg
  [ -f "$ubuntu_key" ] && return 0
  local dir="$root.keyring" deb
  ubuntu_key="$dir/usr/share/keyrings/ubuntu-archive-keyring.gpg"
  [ -f "$ubuntu_key" ] && return 0
  command -v curl >/dev/null || step "installing curl" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q curl
  mkdir -p "$dir"
  deb=$(curl -fsS "$mirror/dists/$suite/main/binary-amd64/Packages.gz" | zcat \
    | awk '/^Package: ubuntu-keyring$/ {p=1} p && !done && /^Filename:/ {print $2; done=1}')
  [ -n "$deb" ] || die "no ubuntu-keyring package in $mirror for $suite"
  curl -fsS -o "$dir/keyring.deb" "$mirror/$deb" || die "cannot fetch $mirror/$deb"
  dpkg-deb -x "$dir/keyring.deb" "$dir" || die "cannot unpack $deb"
  [ -f "$ubuntu_key" ] || die "$deb holds no ubuntu-archive-keyring.gpg"
}

build_root() {
  if [ -e "$root" ]; then
    echo "test-compat: $root is incomplete (an interrupted run?): making it again" >&2
    rm -rf --one-file-system "$root" || die "cannot remove the incomplete root $root"
  fi
  : >"$log"
  if ! command -v debootstrap >/dev/null; then
    step "apt-get update (for debootstrap)" apt-get update -q
    step "installing debootstrap" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q debootstrap
  fi
  [ -e /usr/share/debootstrap/scripts/$suite ] \
    || die "this debootstrap ($(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null)) does not know $suite"
  local keyring=()
  if [ "$distro" = ubuntu ]; then
    ubuntu_keyring
    keyring=(--keyring="$ubuntu_key" --components=main,universe)
  fi
  step "debootstrap --variant=minbase $suite $root (a few minutes)" \
    debootstrap --variant=minbase "${keyring[@]}" "$suite" "$root" "$mirror"
  # No service starts inside the root (redis-server's postinst would start one).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  rm -f "$root/etc/apt/sources.list"
  if [ "$distro" = ubuntu ]; then
    cp "$ubuntu_key" "$root/usr/share/keyrings/gdbckpt-ubuntu-archive.gpg"
    cat >"$root/etc/apt/sources.list.d/ubuntu.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates $suite-security
Components: main universe
Signed-By: /usr/share/keyrings/gdbckpt-ubuntu-archive.gpg
EOF
    return
  fi
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

install_packages() {
  copy_host_settings
  step "apt-get update in $root" "${root_env[@]}" apt-get update -q
  step "apt-get install ${packages[*]} in $root" \
    "${root_env[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
  in_root apt-get clean >>"$log" 2>&1 || true
  printf '%s\n' "${packages[@]}" >"$marker"
}

if [ ! -f "$marker" ]; then
  build_root
  mount_all
  install_packages
  echo "test-compat: $root is ready" >&2
else
  mount_all
  # The root was made with another package list: install what is new.
  if [ "$(cat "$marker")" != "$(printf '%s\n' "${packages[@]}")" ]; then
    install_packages
  fi
fi
copy_host_settings

# A fresh copy of the checkout at /src, and an empty /tmp.
rm -rf --one-file-system "$root/src" || die "cannot remove the old $root/src"
find "$root/tmp" -mindepth 1 -xdev -delete 2>/dev/null || true
mkdir -p "$root/src"
(
  cd "$repo"
  git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
    # Files deleted in the work tree are still in the index; submodules are directories.
    if [ -L "$f" ] || [ -f "$f" ]; then printf '%s\0' "$f"; fi
  done | tar --null --no-recursion -T - -cf -
) | tar -C "$root/src" -xf - || die "cannot copy $repo into $root/src"
[ -x "$root/src/dev" ] || die "$root/src/dev is missing after the copy"

# What goes into the run's environment: pip's and the proxy's settings, where the paths they
# name exist in the root, and CI.
env_args=()
while IFS='=' read -r name value; do
  case "$name" in
    PIP_*|http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY|CI) ;;
    SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|NODE_EXTRA_CA_CERTS) ;;
    *) continue;;
  esac
  case "$value" in /*) [ -e "$root$value" ] || continue;; esac
  env_args+=("$name=$value")
done < <(env)
[ -n "${TERM:-}" ] && env_args+=("TERM=$TERM")

release=$(in_root sh -c '. /etc/os-release && echo "$PRETTY_NAME"')
echo "test-compat: in $root: $(in_root sh -c 'gdb --version | head -n 1'); \
$(in_root python3 --version 2>&1); $(in_root sh -c 'ldd --version | head -n 1'); \
$release; kernel $(uname -r)" >&2
# Run in the background and wait, so that INT/TERM reach the traps at once; cleanup ends
# whatever is left running in the root.
rc=0
in_root "${env_args[@]}" bash -c 'cd /src && exec ./dev test' </dev/null &
child=$!
wait "$child" || rc=$?
child=
echo "test-compat: ./dev test in $release exited with $rc" >&2
exit "$rc"

#!/usr/bin/env bash
# Builds the offline test images (no registry is reachable, so nothing is pulled):
#   execd-test/busybox          Debian's static busybox and its applet links, nothing else
#                               (no libc, no loader): proves the agent's injection needs neither.
#   execd-test/python:bookworm  debootstrap minbase bookworm + python3, python3-ipykernel, bash,
#                               coreutils, procps: what the SDK suites run against.
# Usage: scripts/build-test-image.sh [busybox|python|all]   (default: all)
# A no-op for a tag that already exists (EXECD_TEST_IMAGE_REBUILD=1 forces a rebuild). The
# debootstrap result is cached as a tarball under ${XDG_CACHE_HOME:-~/.cache}/execd-test/, so a
# rebuild after `docker rmi` only re-imports it. Needs root (debootstrap) and Docker.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'build-test-image: %s\n' "$*"; }
die() { printf 'build-test-image: %s\n' "$*" >&2; exit 1; }

cache="${XDG_CACHE_HOME:-$HOME/.cache}/execd-test"
mirror="${EXECD_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
recipe=2 # bump when the tree's recipe changes, so the cached tarball is rebuilt
python_packages=(python3 python3-ipykernel bash coreutils procps)
path_env='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

tmpdirs=()
mounts=()
cleanup() {
  local m d
  for m in "${mounts[@]}"; do mountpoint -q "$m" && umount "$m"; done
  for d in "${tmpdirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

have_image() {
  [ "${EXECD_TEST_IMAGE_REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1
}

report() { # tag, start seconds
  local size
  size=$(docker image inspect -f '{{.Size}}' "$1")
  log "$1 built in $(($(date +%s) - $2))s, $((size / 1000 / 1000)) MB"
}

build_busybox() {
  local tag=execd-test/busybox start bb root
  if have_image "$tag"; then log "$tag exists"; return; fi
  start=$(date +%s)
  bb=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/bin/busybox$' || true)
  [ -n "$bb" ] && [ -x "$bb" ] || die "busybox-static is not installed (scripts/setup.sh installs it)"
  file -L "$bb" | grep -q 'statically linked' || die "$bb is not static"
  root=$(mktemp -d)
  tmpdirs+=("$root")
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,tmp,etc,root,proc,sys,dev}
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  local applet
  while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    ln -sf /bin/busybox "$root/$applet"
  done < <("$bb" --list-full)
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  tar -C "$root" --numeric-owner --owner=0 --group=0 -c . \
    | docker import \
        --change "ENV $path_env" \
        --change 'WORKDIR /root' \
        --change 'CMD ["/bin/sleep", "infinity"]' \
        - "$tag" >/dev/null
  [ "$(docker run --rm "$tag" /bin/sh -c 'echo ok')" = ok ] || die "$tag does not run /bin/sh"
  if docker run --rm "$tag" /bin/sh -c 'ls /lib /lib64 /usr/lib' >/dev/null 2>&1; then
    die "$tag carries a library directory"
  fi
  report "$tag" "$start"
}

build_python() {
  local tag=execd-test/python:bookworm start key tarball root
  if have_image "$tag"; then log "$tag exists"; return; fi
  start=$(date +%s)
  key=$(printf '%s\n' "$recipe" "$suite" "$mirror" "${python_packages[@]}" | sha256sum | cut -c1-12)
  tarball="$cache/python-$suite-$key.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/setup.sh installs it)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    mkdir -p "$cache"
    local old # a failed earlier attempt, kept for inspection until now
    for old in "$cache"/rootfs.*; do
      [ -d "$old" ] || continue
      mountpoint -q "$old/proc" && umount "$old/proc"
      rm -rf "$old"
    done
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    log "debootstrap $suite from $mirror, then apt-get install ${python_packages[*]} (a few minutes; cached afterwards)"
    if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1; then
      tail -20 "$cache/debootstrap.log" >&2
      die "debootstrap failed (log: $cache/debootstrap.log, tree: $root)"
    fi
    # apt resolves the dependencies that debootstrap's --include orders badly (python3-zmq).
    mount -t proc proc "$root/proc"
    mounts+=("$root/proc")
    local rc=0
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -c \
      "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${python_packages[*]} && apt-get clean" \
      >>"$cache/debootstrap.log" 2>&1 || rc=$?
    umount "$root/proc"
    if ((rc)); then
      tail -20 "$cache/debootstrap.log" >&2
      die "apt-get install in the new tree failed (log: $cache/debootstrap.log, tree: $root)"
    fi
    tmpdirs+=("$root")
    # Keep it small: no package lists, no downloaded archives, no docs or man pages.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*.log \
      "$root"/debootstrap
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" \
      --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' --exclude='./tmp/*' .
    mv "$tarball.tmp" "$tarball"
    find "$cache" -maxdepth 1 -name "python-*.tar" ! -path "$tarball" -delete # older recipes
  else
    log "using cached $tarball"
  fi
  local old_id
  old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  docker import \
    --change "ENV $path_env" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /root' \
    --change 'CMD ["sleep", "infinity"]' \
    "$tarball" "$tag" >/dev/null
  docker run --rm "$tag" python3 -c 'import ipykernel' || die "$tag: python3 cannot import ipykernel"
  # A forced rebuild leaves the previous image untagged: remove it (unless a container uses it).
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  report "$tag" "$start"
}

command -v docker >/dev/null || die "docker is not installed"
case "${1:-all}" in
  busybox) build_busybox ;;
  python) build_python ;;
  all) build_busybox; build_python ;;
  *) die "usage: $0 [busybox|python|all]" ;;
esac

#!/usr/bin/env bash
# Local image registries for the prepull tests and benchmark (no public registry is reachable):
#   127.0.0.1:5000  Debian's docker-registry (the CNCF distribution), no auth
#   127.0.0.1:5001  the same with htpasswd auth (user `prepull`, password `prepull-secret`)
# each with its own temporary storage directory and config file, and the test images pushed:
#   127.0.0.1:5000/prepull-test:1    the canonical one (benchmarks, general tests)
#   127.0.0.1:5000/prepull-cancel:1  its own layers, so tests that pull in parallel never share one
#   127.0.0.1:5001/prepull-auth:1    behind auth
#   127.0.0.1:5000/prepull-cli:1     the CLI's `prepull` test's own
# Each image is execd-test/busybox plus one ~30 MB layer of random bytes, so a pull's byte
# progress is visible; it is built offline (scripts/build-test-image.sh busybox, then a
# classic `docker build` from that local image) and removed locally after the push, so that
# a pull really downloads it. Docker treats 127.0.0.0/8 registries as insecure by default,
# so plain HTTP works without daemon configuration.
#
#   scripts/registry.sh start   # idempotent: a no-op while both answer and hold the images
#   scripts/registry.sh stop    # stops both and deletes their storage
#   scripts/registry.sh status
#
# Safe to run concurrently (a lock serialises starts). Needs docker-registry and htpasswd
# (apache2-utils); scripts/setup.sh installs both.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'registry: %s\n' "$*" >&2; }
die() { printf 'registry: %s\n' "$*" >&2; exit 1; }

state="${EXECD_TEST_REGISTRY_STATE:-${TMPDIR:-/tmp}/execd-test-registry}"
user=prepull
password=prepull-secret
blob_mb=30
# name port: the images each registry must hold.
images=("prepull-test 5000" "prepull-cancel 5000" "prepull-auth 5001" "prepull-cli 5000")

# HTTP status of GET http://127.0.0.1:PORT/PATH (000 when nothing answers).
status() {
  local port=$1 path=$2
  shift 2
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "http://127.0.0.1:$port$path" || true
}

manifest_status() { # name port
  local auth=()
  [ "$2" = 5001 ] && auth=(-u "$user:$password")
  status "$2" "/v2/$1/manifests/1" "${auth[@]}" \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'
}

# Whether both registries answer and hold every image.
ready() {
  [ "$(status 5000 /v2/)" = 200 ] || return 1
  [ "$(status 5001 /v2/)" = 401 ] || return 1
  local entry
  for entry in "${images[@]}"; do
    # shellcheck disable=SC2086
    [ "$(manifest_status $entry)" = 200 ] || return 1
  done
}

stop_one() { # port
  local pid_file="$state/$1/pid" pid
  [ -f "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  if kill -0 "$pid" 2>/dev/null && grep -q docker-registry "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid"
    local i
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "${state:?}/$1"
}

start_one() { # port [auth]
  local port=$1 auth=${2:-} dir="$state/$1"
  stop_one "$port"
  if [ "$(status "$port" /v2/)" != 000 ]; then
    die "127.0.0.1:$port is taken by something this script did not start"
  fi
  mkdir -p "$dir/storage"
  {
    echo "version: 0.1"
    echo "log: {level: warn}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $dir/storage}"
    echo "  delete: {enabled: true}"
    echo "http: {addr: 127.0.0.1:$port}"
    if [ -n "$auth" ]; then
      echo "auth:"
      echo "  htpasswd: {realm: execd-test, path: $dir/htpasswd}"
    fi
  } >"$dir/config.yml"
  if [ -n "$auth" ]; then
    htpasswd -Bbn "$user" "$password" >"$dir/htpasswd" 2>/dev/null
  fi
  # 9>&-: the registry must not inherit (and so hold) the lock.
  setsid docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pid"
  local i want=200
  [ -n "$auth" ] && want=401
  for i in $(seq 100); do
    [ "$(status "$port" /v2/)" = "$want" ] && return 0
    sleep 0.1
  done
  tail -5 "$dir/log" >&2
  die "the registry on 127.0.0.1:$port did not come up (log: $dir/log)"
}

# Builds execd-test/<name>:1 (busybox + a random layer), pushes it, and removes it locally.
push_image() { # name port
  local name=$1 port=$2 ctx ref="127.0.0.1:$2/$1:1" local_tag="execd-test/$1:1"
  ctx=$(mktemp -d)
  head -c $((blob_mb * 1024 * 1024)) /dev/urandom >"$ctx/blob"
  printf 'FROM execd-test/busybox\nCOPY blob /blob\n' >"$ctx/Dockerfile"
  # The classic builder: FROM a local image, nothing pulled (BuildKit may be absent).
  DOCKER_BUILDKIT=0 docker build -q -t "$local_tag" "$ctx" >"$ctx.log" 2>&1 \
    || { cat "$ctx.log" >&2; rm -rf "$ctx" "$ctx.log"; die "cannot build $local_tag"; }
  rm -rf "$ctx" "$ctx.log"
  docker tag "$local_tag" "$ref"
  # A private client config, so that the login never touches the user's.
  local config
  config=$(mktemp -d)
  if [ "$port" = 5001 ]; then
    printf '%s' "$password" | DOCKER_CONFIG=$config docker login -u "$user" --password-stdin "127.0.0.1:$port" >/dev/null 2>&1 \
      || { rm -rf "$config"; die "cannot log in to 127.0.0.1:$port"; }
  fi
  DOCKER_CONFIG=$config docker push -q "$ref" >/dev/null || { rm -rf "$config"; die "cannot push $ref"; }
  rm -rf "$config"
  docker rmi "$ref" "$local_tag" >/dev/null
  log "pushed $ref"
}

start() {
  command -v docker-registry >/dev/null || die "docker-registry is not installed (scripts/setup.sh installs it)"
  command -v htpasswd >/dev/null || die "htpasswd is not installed (apache2-utils; scripts/setup.sh installs it)"
  command -v curl >/dev/null || die "curl is not installed"
  mkdir -p "$state"
  exec 9>"$state/lock"
  flock -w 600 9 || die "another registry.sh holds $state/lock"
  if ready; then
    return 0
  fi
  scripts/build-test-image.sh busybox >/dev/null
  start_one 5000
  start_one 5001 auth
  local entry
  for entry in "${images[@]}"; do
    # shellcheck disable=SC2086
    push_image $entry
  done
  ready || die "the registries do not hold the test images after the push"
  log "ready on 127.0.0.1:5000 and 127.0.0.1:5001 (auth)"
}

case "${1:-}" in
  start) start ;;
  stop)
    mkdir -p "$state"
    exec 9>"$state/lock"
    flock -w 600 9 || die "another registry.sh holds $state/lock"
    stop_one 5000
    stop_one 5001
    ;;
  status) if ready; then echo "ready"; else echo "not ready"; exit 1; fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac

#!/usr/bin/env bash
# Schema-based API fuzzing (schemathesis, pinned in tests/requirements.txt) of the live binaries
# against our own generated documents, proto/execd.yaml and proto/sandboxd.yaml.
#
#   scripts/api-fuzz.sh [execd|sandboxd|all] [--long] [-- schemathesis args...]
#
# Checks: 5xx answers outside the contract (tests/apifuzz/hooks.py), status codes, content
# types and response bodies (SSE events included) against the document; every phase
# (examples, coverage, fuzzing, stateful over the links schemathesis infers). The short form
# (CI, scripts/test.sh) is bounded and seeded; `--long` generates thousands of cases per
# document with a random seed (printed, so a finding can be replayed with --seed).
#
# execd runs as the debug binary inside a throwaway container of execd-test/python:bookworm
# (the fuzzer runs commands and deletes paths: never on this host), published on loopback only,
# its root read-only and its writable places small tmpfs (a fuzzed command cannot fill a disk).
# sandboxd runs on this host against the Docker engine; creates go to execd-test/busybox, a
# few per run (the hook rewrites the first ones; random images fail at once, no registry).
#
# Prints, per document: cases generated, failures; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."

target=all
long=0
extra=()
while (($#)); do
  case "$1" in
    execd | sandboxd | all) target=$1 ;;
    --long) long=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [execd|sandboxd|all] [--long] [-- schemathesis args...]" >&2; exit 2 ;;
  esac
  shift
done

st=.venv/bin/schemathesis
[ -x "$st" ] || { echo "api-fuzz: $st missing: run scripts/setup.sh" >&2; exit 2; }
cargo build -q -j2 --features k8s-portforward --bin execd --bin sandboxd || exit 1

out=target/api-fuzz
mkdir -p "$out"
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

if ((long)); then
  # ≥ 2000 generated cases per document; a fresh seed each time.
  sizing=(--max-examples 15)
else
  sizing=(--max-examples 3 --seed 20261206)
fi
checks=server_error_outside_contract,status_code_conformance,content_type_conformance,response_schema_conformance

cleanup=()
on_exit() { for c in "${cleanup[@]}"; do eval "$c"; done; }
trap on_exit EXIT

# run NAME DOCUMENT BASE_URL [schemathesis args...]: one schemathesis run, summarized.
rc=0
run() {
  local name=$1 doc=$2 base=$3
  shift 3
  local log=$out/$name.log
  local started=$SECONDS
  SCHEMATHESIS_HOOKS=tests.apifuzz.hooks PYTHONPATH=. "$st" run "$doc" --url "$base" \
    --checks "$checks" "${sizing[@]}" --workers 2 --request-timeout 15 --no-color \
    --generation-database none --suppress-health-check all \
    --report junit --report-dir "$out/$name" "$@" ${extra[@]+"${extra[@]}"} >"$log" 2>&1
  local st_rc=$?
  local cases failures
  cases=$(grep -oE '[0-9]+ generated' "$log" | tail -1 | grep -oE '[0-9]+')
  failures=$(grep -oE '[0-9]+ (unique )?failures?' "$log" | tail -1 | grep -oE '^[0-9]+')
  printf 'api-fuzz %s: %s cases, %s failures, %s s (log %s)\n' \
    "$name" "${cases:-?}" "${failures:-0}" "$((SECONDS - started))" "$log"
  if ((st_rc != 0)); then
    sed -n '/^=* FAILURES =*$/,/^=* SUMMARY =*$/p' "$log" | head -200
    grep -E '^Seed:' "$log"
    rc=1
  fi
}

fuzz_execd() {
  local name=execd-fuzz-$$
  # The debug build is linked against glibc: the bookworm test image has it.
  docker run -d --rm --name "$name" -p 127.0.0.1::44772 \
    --pids-limit 512 --memory 1g --cpus 1 \
    --read-only --tmpfs /var/lib/execd:size=128m --tmpfs /tmp:size=64m --tmpfs /root:size=64m \
    -v "$PWD/target/debug/execd:/execd:ro" \
    execd-test/python:bookworm \
    /execd --host 0.0.0.0 --port 44772 --access-token "$token" --state-dir /var/lib/execd \
    --no-jupyter --kernel-pool 0 --isolated-allow-degraded >/dev/null || return 1
  cleanup+=("docker rm -f $name >/dev/null 2>&1")
  local port=
  for _ in $(seq 100); do
    docker logs "$name" 2>/dev/null | grep -q '^listening on' && port=$(docker port "$name" 44772/tcp | head -1 | cut -d: -f2) && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "api-fuzz: execd did not start" >&2; docker logs "$name" >&2; return 1; }
  run execd proto/execd.yaml "http://127.0.0.1:$port" -H "X-EXECD-ACCESS-TOKEN: $token"
  docker logs "$name" >"$out/execd.server.log" 2>&1
}

fuzz_sandboxd() {
  local agent=${SANDBOXD_AGENT:-target/x86_64-unknown-linux-musl/release/execd}
  [ -x "$agent" ] || { echo "api-fuzz: $agent missing: run scripts/build-agent.sh" >&2; return 1; }
  local data
  data=$(mktemp -d)
  target/debug/sandboxd serve --host 127.0.0.1 --port 0 --api-key "$token" --data-dir "$data" \
    --agent "$agent" --max-sandboxes-per-user 5 --log-level info \
    >"$out/sandboxd.stdout" 2>"$out/sandboxd.server.log" &
  local pid=$!
  cleanup+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null; sandboxd_orphans $data; rm -rf $data")
  local base=
  for _ in $(seq 100); do
    base=$(sed -n 's/^sandboxd listening on //p' "$out/sandboxd.stdout")
    [ -n "$base" ] && break
    sleep 0.1
  done
  [ -n "$base" ] || { echo "api-fuzz: sandboxd did not start" >&2; cat "$out/sandboxd.server.log" >&2; return 1; }
  export API_FUZZ_CREATES=$(((long)) && echo 8 || echo 2)
  local more=()
  # sandboxd's document is smaller: more examples per operation reach the same case count.
  ((long)) && more=(--max-examples 60)
  run sandboxd proto/sandboxd.yaml "$base" -H "OPEN-SANDBOX-API-KEY: $token" ${more[@]+"${more[@]}"}
}

# Removes whatever containers a (stopped) sandboxd of state dir $1 left.
sandboxd_orphans() {
  local instance
  instance=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select value from meta where key = ?", ("instance",)).fetchone()[0])' "$1/sandboxd.db" 2>/dev/null) || return 0
  docker ps -aq --filter "label=io.execd.sandboxd.instance=$instance" | xargs -r docker rm -f >/dev/null
}

case $target in
  execd) fuzz_execd || rc=1 ;;
  sandboxd) fuzz_sandboxd || rc=1 ;;
  all) { fuzz_execd || rc=1; }; { fuzz_sandboxd || rc=1; } ;;
esac
exit "$rc"

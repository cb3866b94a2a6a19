#!/usr/bin/env bash
# Benchmarks: builds the static agent (scripts/build-agent.sh) and the harness in
# examples/bench (profile bench-tool: optimised, quick to compile), runs it against the agent,
# prints a markdown table of each figure beside its anchor measured in the same run, and writes
# it to target/bench/results.md. Everything talks to 127.0.0.1 only.
#
#   scripts/bench.sh                  # every figure (about a minute once built)
#   scripts/bench.sh roundtrip stream # only sections whose area/section name matches
#   scripts/bench.sh --list           # section names
#   scripts/bench.sh --quick          # reduced counts, to check the harness itself
#   scripts/bench.sh k8s              # the Kubernetes runtime on examples/fake_kube beside Docker
#   scripts/bench.sh density [N]      # N idle sandboxes on this host (default 500; only when
#                                     # named): create rate, memory, list and delete at N
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="${CARGO_JOBS:-2}"
# `density N`: the count goes to the harness through its environment (EXECD_BENCH_DENSITY_N).
if [ "${1:-}" = density ] && [[ "${2:-}" =~ ^[0-9]+$ ]]; then
  export EXECD_BENCH_DENSITY_N="$2"
  set -- density "${@:3}"
fi
agent=target/x86_64-unknown-linux-musl/release/execd
out=target/bench/results.md

bash scripts/build-agent.sh >&2
# With the Kubernetes runtime and OUR MODEL OF KUBERNETES (examples/fake_kube), for the `k8s`
# area (sandboxd --runtime kubernetes beside --runtime docker).
cargo build --locked -j"$jobs" --profile bench-tool --features k8s-portforward --example bench --example fake_kube --bin sandboxd >&2

mkdir -p target/bench
# The upstream server the `upstream` area compares sandboxd with, in a venv of its own (never
# the project's): only when that area is asked for by name, or when every area runs.
if [ $# -eq 0 ] || printf '%s\n' "$@" | grep -q -e upstream -e vs-opensandbox; then
  if [ ! -x target/bench-osb/bin/opensandbox-server ]; then
    python3 -m venv target/bench-osb >&2
    target/bench-osb/bin/pip install -q 'opensandbox-server==1.1.1' >&2
  fi
fi
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  rev="$rev+dirty"
fi
{
  echo "Benchmarks of execd $rev, $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  target/bench-tool/examples/bench --agent "$agent" "$@"
} | tee "$out.partial"
mv "$out.partial" "$out"
echo "bench: table written to $out" >&2

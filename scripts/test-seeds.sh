#!/usr/bin/env bash
# The seed tests (tests/seeds): each seed document's own examples, replayed through a small
# adapter (tests/seeds/*_compat.py) against a real sandboxd on the Docker engine, with the
# project's .venv (scripts/setup.sh makes it). Fails if any test fails, errors or is skipped.
# Extra arguments go to pytest (e.g. `scripts/test-seeds.sh -k api004`).
set -uo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test-seeds: %s\n' "$*"; }

# The binaries under test (each a no-op when fresh).
scripts/build-agent.sh || exit 1
cargo build --locked -j"${CARGO_JOBS:-2}" --bin sandboxd || exit 1

pytest=.venv/bin/pytest
if [ ! -x "$pytest" ]; then
  log "$pytest is missing: run scripts/setup.sh"
  exit 1
fi
mkdir -p target/seed-tests
out=target/seed-tests/pytest.log
"$pytest" -p no:cacheprovider -q -rfEsxX tests/seeds "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
if ((status)); then
  log "FAILED"
  exit "$status"
fi
if grep -qE '[0-9]+ (skipped|xfailed|xpassed)' "$out"; then
  log "skipped or xfail tests count as failures here"
  exit 1
fi
log "ok"

#!/usr/bin/env bash
# The web console's browser tests (tests/console): a real headless Chromium (Debian's chromium
# and chromium-driver, driven by selenium from the project's .venv; scripts/setup.sh installs
# all three) against a real sandboxd on the Docker engine. Screenshots of each page land in
# target/console-shots/. Fails if any test fails, errors or is skipped.
# Extra arguments go to pytest (e.g. `scripts/test-console.sh -k terminal`).
set -uo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test-console: %s\n' "$*"; }

# The binaries under test (each a no-op when fresh).
scripts/build-agent.sh || exit 1
cargo build --locked -j"${CARGO_JOBS:-2}" --bin sandboxd || exit 1

pytest=.venv/bin/pytest
if [ ! -x "$pytest" ]; then
  log "$pytest is missing: run scripts/setup.sh"
  exit 1
fi
mkdir -p target/console-shots
rm -f target/console-shots/*.png
out=target/console-shots/pytest.log
# The browser needs these even where Docker is optional: a missing one is a failure here.
export EXECD_TEST_REQUIRE_DOCKER=1
"$pytest" -p no:cacheprovider -q -rfEsxX tests/console "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
if ((status)); then
  log "FAILED"
  exit "$status"
fi
if grep -qE '[0-9]+ (skipped|xfailed|xpassed)' "$out"; then
  log "skipped or xfail tests count as failures here"
  exit 1
fi
log "ok ($(find target/console-shots -name '*.png' | wc -l) screenshots in target/console-shots)"

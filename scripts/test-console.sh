#!/usr/bin/env bash
# The web console's browser tests (tests/console): a real headless Chromium (Debian's chromium
# and chromium-driver, driven by selenium from the project's .venv; scripts/setup.sh installs
# all three) against a real sandboxd on the Docker engine. Screenshots of each page land in
# target/console-shots/. Fails if any test fails, errors or is skipped.
# Extra arguments go to pytest (e.g. `scripts/test-console.sh -k terminal`).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pytest-suite.sh

mkdir -p target/console-shots
rm -f target/console-shots/*.png
# The browser needs these even where Docker is optional: a missing one is a failure here.
export EXECD_TEST_REQUIRE_DOCKER=1
run_pytest_suite test-console tests/console target/console-shots "$@" || exit $?
log "ok ($(find target/console-shots -name '*.png' | wc -l) screenshots in target/console-shots)"

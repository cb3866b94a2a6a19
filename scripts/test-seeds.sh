#!/usr/bin/env bash
# The seed tests (tests/seeds): each seed document's own examples, replayed through a small
# adapter (tests/seeds/*_compat.py) against a real sandboxd on the Docker engine, with the
# project's .venv (scripts/setup.sh makes it). Fails if any test fails, errors or is skipped.
# Extra arguments go to pytest (e.g. `scripts/test-seeds.sh -k api004`).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pytest-suite.sh

run_pytest_suite test-seeds tests/seeds target/seed-tests "$@" || exit $?
log "ok"

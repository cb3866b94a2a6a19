#!/usr/bin/env bash
# The test suite: unit tests and the integration suite against the real binaries.
# Docker-backed tests need `scripts/build-agent.sh` to have run (CI does it first).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo nextest run --locked -j2 --no-fail-fast "$@"

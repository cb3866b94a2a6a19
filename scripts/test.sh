#!/usr/bin/env bash
# The test suite: unit tests and the integration suite against the real binaries, including
# the agent image on the Docker engine (so the static agent is built first; a no-op when fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-agent.sh
exec cargo nextest run --locked -j2 --no-fail-fast "$@"

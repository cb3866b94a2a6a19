#!/usr/bin/env bash
# The test suite: unit tests and the integration suite against the real binaries, including
# the agent image on the Docker engine (so the static agent is built first; a no-op when fresh),
# then the short API fuzzing of both documents (scripts/api-fuzz.sh), the SDK suites (scripts/test-sdk.sh) and the seed tests (scripts/test-seeds.sh). All
# always run; the result fails if any failed.
# Arguments go to nextest only.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/build-agent.sh || exit 1
rc=0
cargo nextest run --locked -j2 --no-fail-fast "$@" || rc=$?
scripts/api-fuzz.sh || { fuzz_rc=$?; ((rc)) || rc=$fuzz_rc; }
scripts/test-sdk.sh || { sdk_rc=$?; ((rc)) || rc=$sdk_rc; }
scripts/test-seeds.sh || { seeds_rc=$?; ((rc)) || rc=$seeds_rc; }
exit "$rc"

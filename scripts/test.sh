#!/usr/bin/env bash
# The test suite: unit tests and the integration suite against the real binaries, including
# the agent image on the Docker engine (so the static agent is built first; a no-op when fresh),
# then the SDK suites (scripts/test-sdk.sh), the seed tests (scripts/test-seeds.sh) and a short
# run of the fuzzers (scripts/fuzz.sh). All always run; the result fails if any failed.
# Arguments go to nextest only.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/build-agent.sh || exit 1
rc=0
cargo nextest run --locked -j2 --no-fail-fast "$@" || rc=$?
scripts/test-sdk.sh || { sdk_rc=$?; ((rc)) || rc=$sdk_rc; }
scripts/test-seeds.sh || { seeds_rc=$?; ((rc)) || rc=$seeds_rc; }
# The coverage-guided fuzzers, a short bounded run of every target (scripts/fuzz.sh; the long
# run is `scripts/fuzz.sh all 600`). Their instrumented release build is the cost: ~6-10 min
# of CPU from scratch, ~5 min after a change to the library. EXECD_TEST_FUZZ=0 skips them;
# EXECD_TEST_FUZZ_SECONDS sets the time per target (default 5).
if [[ ${EXECD_TEST_FUZZ:-1} != 0 ]]; then
    scripts/fuzz.sh all "${EXECD_TEST_FUZZ_SECONDS:-5}" || { fuzz_rc=$?; ((rc)) || rc=$fuzz_rc; }
fi
exit "$rc"

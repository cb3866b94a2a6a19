#!/usr/bin/env bash
# The test suite: unit tests and the integration suite against the real binaries (nextest),
# including the agent image on the Docker engine (so the static agent is built first; a no-op
# when fresh), then the short API fuzzing of both documents (scripts/api-fuzz.sh), the SDK
# suites (scripts/test-sdk.sh), the seed tests (scripts/test-seeds.sh), the web console in a
# headless Chromium (scripts/test-console.sh) and a short run of the coverage-guided fuzzers
# (scripts/fuzz.sh); the real-cluster Kubernetes suite (L4) only when SANDBOXD_K8S_E2E=1, else
# a summary line saying it was not run. All always run; the result fails if any failed, and the
# log ends with one summary line per part. Arguments go to nextest only.
#
# The fuzzers' instrumented release build is their cost (~6-10 min of CPU from scratch, ~5 min
# after a change to the library); EXECD_TEST_FUZZ=0 skips them, EXECD_TEST_FUZZ_SECONDS sets
# the time per target (default 5; the long run is `scripts/fuzz.sh all 600`).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/build-agent.sh || exit 1
mkdir -p target/test-logs
rc=0
summary=()

# Runs one part, keeps its log, and records its last summary-looking line.
part() {
  local name=$1 pattern=$2
  shift 2
  local log=target/test-logs/$name.log status
  "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  local line
  line=$(grep -E "$pattern" "$log" | paste -sd ';' -)
  summary+=("$(printf '%-10s %s' "$name" "${line:-no summary} (exit $status)")")
  ((status)) && ((rc == 0)) && rc=$status
  return 0
}

# With the Kubernetes runtime and its port-forward mode (feature k8s-portforward = k8s +
# kube/ws): its builders, request-contract and schema tests, the fake_kube suites.
part nextest '^ +Summary \[' cargo nextest run --locked -j2 --no-fail-fast --features k8s-portforward "$@"
# L4, the Kubernetes runtime against a real cluster (design §16.6): only with SANDBOXD_K8S_E2E=1,
# KUBECONFIG and SANDBOXD_AGENT_IMAGE (the test is #[ignore]d, so the run above never counts it).
# Otherwise its summary line says it was not run, and why.
if [[ ${SANDBOXD_K8S_E2E:-} == 1 ]]; then
  if [[ -z ${KUBECONFIG:-} || -z ${SANDBOXD_AGENT_IMAGE:-} ]]; then
    summary+=("$(printf '%-10s %s' k8s-e2e 'FAILED: SANDBOXD_K8S_E2E=1 needs KUBECONFIG and SANDBOXD_AGENT_IMAGE')")
    ((rc == 0)) && rc=1
  else
    part k8s-e2e '^ +Summary \[' cargo nextest run --locked -j2 --no-fail-fast --features k8s-portforward \
      --run-ignored only -E 'test(=sandboxd_k8s::sandboxd_on_a_real_cluster_runs_the_l3_scenarios)'
  fi
else
  summary+=("$(printf '%-10s %s' k8s-e2e 'not run: SANDBOXD_K8S_E2E unset (no cluster on this machine)')")
fi
# The prepull tests start local registries (scripts/registry.sh); nothing after them needs one.
scripts/registry.sh stop >/dev/null 2>&1 || true
part api-fuzz '^api-fuzz (execd|sandboxd): ' scripts/api-fuzz.sh
part sdk '^test-sdk: (ok|FAILED)' scripts/test-sdk.sh
part seeds '([0-9]+ passed|failed|error).* in [0-9.]+s' scripts/test-seeds.sh
part console '([0-9]+ passed|failed|error).* in [0-9.]+s' scripts/test-console.sh
if [[ ${EXECD_TEST_FUZZ:-1} != 0 ]]; then
  part fuzz '^fuzz: [0-9]+ targets' scripts/fuzz.sh all "${EXECD_TEST_FUZZ_SECONDS:-5}"
fi

echo
echo "test summary:"
for s in "${summary[@]}"; do printf '  %s\n' "$s"; done
grep -h -A5 '^test-sdk: summary' target/test-logs/sdk.log | sed 's/^/  /' || true
exit "$rc"

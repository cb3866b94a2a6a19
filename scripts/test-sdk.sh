#!/usr/bin/env bash
# The SDK suites (tests/sdk): the official OpenSandbox Python SDKs, unmodified, against a real
# sandboxd + execd on the Docker engine, once per supported SDK version (.venv-sdk010,
# .venv-sdk111; scripts/setup.sh makes them). Fails if any test fails, errors or is skipped.
# Extra arguments go to both pytest runs (e.g. `scripts/test-sdk.sh -k files`).
set -uo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test-sdk: %s\n' "$*"; }

# The binaries and images under test (each a no-op when fresh).
scripts/build-agent.sh || exit 1
cargo build --locked -j"${CARGO_JOBS:-2}" --features k8s --bin sandboxd || exit 1
scripts/build-test-image.sh all || exit 1

mkdir -p target/sdk-tests
rc=0
summaries=()
# Both SDK generations with the API key, then 1.1.1 once more as a user with a Bearer token
# (SDK_AUTH=bearer; the SDK's custom headers carry it).
for run in 010 111 111-bearer; do
  v=${run%%-*}
  auth=apikey
  [[ $run == *-bearer ]] && auth=bearer
  pytest=.venv-sdk$v/bin/pytest
  if [ ! -x "$pytest" ]; then
    log "$pytest is missing: run scripts/setup.sh"
    summaries+=("sdk $v: not run (no venv)")
    rc=1
    continue
  fi
  sdk=$(.venv-sdk$v/bin/python -c 'from importlib.metadata import version; print(version("opensandbox"))')
  log "opensandbox $sdk (.venv-sdk$v), auth: $auth"
  out=target/sdk-tests/pytest-sdk$run.log
  SDK_AUTH=$auth "$pytest" -p no:cacheprovider -q -rfEsxX tests/sdk "$@" 2>&1 | tee "$out"
  status=${PIPESTATUS[0]}
  summary=$(grep -E '(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s' "$out" | tail -1)
  summaries+=("opensandbox $sdk ($auth): ${summary:-no summary (pytest exit $status)}")
  if ((status)); then
    rc=1
  elif grep -qE '[0-9]+ (skipped|xfailed|xpassed)' <<<"$summary"; then
    log "opensandbox $sdk ($auth): skipped or xfail tests count as failures here"
    rc=1
  fi
done

log "summary"
for s in "${summaries[@]}"; do printf '  %s\n' "$s"; done
if ((rc)); then log "FAILED"; else log "ok"; fi
exit "$rc"

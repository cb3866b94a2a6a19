# Sourced by the pytest-driven suites (test-seeds.sh, test-console.sh): builds the binaries
# under test, runs one test directory with the project's .venv, and fails on any failure,
# error, skip, xfail or xpass. Usage: run_pytest_suite NAME TESTS_DIR OUT_DIR [pytest args…]
# `log` prints a line under the suite's name.
log() { printf '%s: %s\n' "${suite_name:-pytest-suite}" "$*"; }
run_pytest_suite() {
  suite_name=$1
  local tests=$2 outdir=$3
  shift 3
  # The binaries under test (each a no-op when fresh).
  scripts/build-agent.sh || return 1
  cargo build --locked -j"${CARGO_JOBS:-2}" --features k8s-portforward --bin sandboxd || return 1
  local pytest=.venv/bin/pytest
  if [ ! -x "$pytest" ]; then
    log "$pytest is missing: run scripts/setup.sh"
    return 1
  fi
  mkdir -p "$outdir"
  local out=$outdir/pytest.log status
  "$pytest" -p no:cacheprovider -q -rfEsxX "$tests" "$@" 2>&1 | tee "$out"
  status=${PIPESTATUS[0]}
  if ((status)); then
    log "FAILED"
    return "$status"
  fi
  if grep -qE '[0-9]+ (skipped|xfailed|xpassed)' "$out"; then
    log "skipped or xfail tests count as failures here"
    return 1
  fi
}

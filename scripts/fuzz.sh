#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of every parser that sees user bytes; the
# targets live in fuzz/ (its own Cargo workspace, see fuzz/README.md).
#
#   scripts/fuzz.sh [target|all] [seconds]   one or every target for `seconds` each (default 20)
#   scripts/fuzz.sh all 600                  the long run (10 min per target)
#   scripts/fuzz.sh --list                   the targets
#
# Prints per target the runs executed and the verdict; exits non-zero on any crash (panic or
# failed assertion), hang (-timeout, 10 s per input) or OOM (-rss_limit_mb, 2 GiB), leaving the
# input in fuzz/artifacts/<target>/. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> fuzz/artifacts/<target>/<file>   (in fuzz/)
#
# The toolchain is stable: cargo-fuzz needs nightly flags (-Z), which RUSTC_BOOTSTRAP=1
# unlocks. No sanitizer by default (the code under test is safe Rust, and ASan doubles the
# build); FUZZ_SANITIZER=address turns it on. FUZZ_JOBS sets the build's -j (default 2).
# New corpus entries go to fuzz/target/corpus/<target>/ (not committed); the hand-made seeds are
# fuzz/corpus/<target>/.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${FUZZ_JOBS:-2}
sanitizer=${FUZZ_SANITIZER:-none}

command -v cargo-fuzz >/dev/null || {
    echo "fuzz: cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2
    exit 2
}
all=$(cargo fuzz list)
if [[ ${1:-} == --list ]]; then
    echo "$all"
    exit 0
fi
which=${1:-all}
secs=${2:-20}
if [[ $which == all ]]; then
    targets=$all
elif grep -qx "$which" <<<"$all"; then
    targets=$which
else
    echo "fuzz: unknown target $which (one of: $(echo $all))" >&2
    exit 2
fi

start=$SECONDS
if [[ $which == all ]]; then
    cargo fuzz build -s "$sanitizer" || exit 1
else
    cargo fuzz build -s "$sanitizer" "$which" || exit 1
fi
echo "fuzz: build took $((SECONDS - start)) s"

rc=0
ran=0 failed=0 total=0
printf '%-16s %12s %8s  %s\n' target runs seconds verdict
for t in $targets; do
    work=target/corpus/$t
    mkdir -p "$work" "corpus/$t" "artifacts/$t"
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="artifacts/$t/")
    [[ -f dicts/$t.dict ]] && args+=(-dict="dicts/$t.dict")
    case $t in
        glob) args+=(-max_len=65536) ;;
        archive) args+=(-max_len=32768) ;;
        *) args+=(-max_len=8192) ;;
    esac
    log=target/fuzz-$t.log
    t0=$SECONDS
    cargo fuzz run -s "$sanitizer" "$t" "$work" "corpus/$t" -- "${args[@]}" >"$log" 2>&1
    status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if ((status == 0)); then
        verdict=ok
    else
        rc=1
        kind=$(grep -oE 'ERROR: libFuzzer: [a-z-]+|panicked at [^ ]*' "$log" | head -1)
        verdict="FAILED (${kind:-exit $status}): $(ls -t "artifacts/$t" | head -1); log fuzz/$log"
    fi
    printf '%-16s %12s %8s  %s\n' "$t" "${runs:-?}" "$((SECONDS - t0))" "$verdict"
    ran=$((ran + 1)) total=$((total + ${runs:-0}))
    ((status)) && failed=$((failed + 1))
done
echo "fuzz: $ran targets, $total inputs, $failed failed (crash, hang or OOM)"
exit "$rc"

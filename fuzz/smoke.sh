#!/usr/bin/env bash
# Fuzz smoke test, run by CI on a clean checkout:
#
# 1. builds every cargo-fuzz target;
# 2. replays every saved crash reproducer (fuzz/artifacts/<target>/*) once,
#    as a regression test: each one crashed the target before its fix;
# 3. runs each target for a few seconds, starting from its hand seeds
#    (fuzz/seeds/<target>) plus the generated corpus (fuzz/corpus/<target>,
#    not tracked: see corpus.sh) when one is present.
#
# New inputs go to a scratch directory, so the checkout stays clean; a new
# crash is saved under fuzz/artifacts/<target>/ (commit it with its fix) and
# fails the script.
#
#   bash fuzz/smoke.sh [seconds per target, default 10]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-10}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing; installing it from crates.io"
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer…, sancov passes);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
# tokengate forbids unsafe code, so the address sanitizer adds little here
# but build time; libFuzzer's own checks (panics, timeouts, OOM) still apply.
flags=(--sanitizer none)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "build: $((SECONDS - start)) s"

failed=0
for t in $(cargo fuzz list); do
    # Every reproducer, one run each (libFuzzer runs files given by name
    # once instead of fuzzing).
    reproducers=()
    if [ -d "artifacts/$t" ]; then
        while IFS= read -r -d '' f; do
            reproducers+=("$f")
        done < <(find "artifacts/$t" -type f -print0 | sort -z)
    fi
    if [ "${#reproducers[@]}" -gt 0 ]; then
        if cargo fuzz run "${flags[@]}" "$t" "${reproducers[@]}" >"$scratch/$t.replay.log" 2>&1; then
            echo "$t: ${#reproducers[@]} reproducer(s) replayed, ok"
        else
            echo "$t: a reproducer in artifacts/$t crashes again: FAILED"
            tail -n 40 "$scratch/$t.replay.log"
            failed=1
        fi
    fi

    mkdir -p "$scratch/$t"
    inputs=()
    for d in "seeds/$t" "corpus/$t"; do
        [ ! -d "$d" ] || inputs+=("$d")
    done
    t0=$SECONDS
    if cargo fuzz run "${flags[@]}" "$t" "$scratch/$t" "${inputs[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$' || true)
        echo "$t: ok, ${runs:-?} runs in $((SECONDS - t0)) s (from ${inputs[*]:-nothing})"
    else
        echo "$t: FAILED"
        tail -n 40 "$scratch/$t.log"
        failed=1
    fi
done
echo "fuzz smoke: $((SECONDS - start)) s in all"
exit "$failed"

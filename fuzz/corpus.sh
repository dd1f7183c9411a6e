#!/usr/bin/env bash
# Regenerates the fuzz corpora (fuzz/corpus/<target>, not tracked): each
# target runs for a while starting from its hand seeds (fuzz/seeds/<target>)
# and whatever corpus is already there, then the corpus is minimised
# (`cargo fuzz cmin`). smoke.sh and later campaigns start from it.
#
#   bash fuzz/corpus.sh [seconds per target, default 60] [target …]
#
# With no target named, every target, one after another. On a shared
# machine, run it niced: `nice -n 15 bash fuzz/corpus.sh 600`.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing; installing it from crates.io"
    cargo install cargo-fuzz --locked
fi
# See smoke.sh: nightly-only flags on the stable toolchain, no sanitizer.
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none)

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

cargo fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    inputs=()
    [ ! -d "seeds/$t" ] || inputs+=("seeds/$t")
    echo "== $t: $secs s from ${inputs[*]:-nothing} and corpus/$t ($(find "corpus/$t" -type f | wc -l) inputs)"
    cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "${inputs[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1
    cargo fuzz cmin "${flags[@]}" "$t" "corpus/$t"
    echo "== $t: corpus/$t holds $(find "corpus/$t" -type f | wc -l) inputs after cmin"
done

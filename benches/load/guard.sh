#!/usr/bin/env bash
# The request path's regression guard: tokengate's user-space instructions per
# request (callgrind, through instructions.sh: HTTP/1.1 keep-alive, HTTP/2,
# one request per new TLS connection, and one per resumed TLS connection)
# against the figures committed in
# benches/load/baseline.tsv. Instruction counts repeat from run to run within
# about 1 %, whatever else the machine is doing, so unlike req/s they can gate
# CI on a shared machine.
#
#   bash benches/load/guard.sh                          # check (CI runs this); ~3 min
#   REASON="why" bash benches/load/guard.sh --update    # accept the measured figures
#
# Fails when a scenario costs more than GUARD_TOLERANCE percent (default 3)
# above its baseline. A change that costs more on purpose updates the baseline
# in the same commit (--update writes the measured figures and REASON into
# baseline.tsv) and says why in the commit message. A scenario that got more
# than the tolerance cheaper passes, with a note that the baseline can be
# lowered to keep the gain.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BASELINE=$HERE/baseline.tsv
TOL=${GUARD_TOLERANCE:-3}
MODE=${1:-check}
case "$MODE" in
    check | --check) MODE=check ;;
    --update) : "${REASON:?--update needs REASON=\"why the figures moved\" (it goes into baseline.tsv)}" ;;
    *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

# The baseline's measurement sizes, so a check repeats exactly what the
# baseline measured (per-request averages still carry a little warm-up).
NREQ=$(awk -F'\t' '$1 == "#nreq" {print $2}' "$BASELINE" 2>/dev/null || true)
NCONN=$(awk -F'\t' '$1 == "#nconn" {print $2}' "$BASELINE" 2>/dev/null || true)
export NREQ=${NREQ:-10000} NCONN=${NCONN:-250} PROXIES=tokengate
bash "$HERE/instructions.sh"

python3 - "$HERE/out/instructions/results.tsv" "$BASELINE" "$TOL" "$MODE" "${REASON:-}" "$NREQ" "$NCONN" <<'PY'
import sys, datetime
results, baseline, tol, mode, reason, nreq, nconn = sys.argv[1:8]
tol = float(tol)
measured = {}
for line in open(results):
    name, sc, total, _ = line.rstrip("\n").split("\t")
    if name == "tokengate":
        measured[sc] = int(total)
base, why = {}, {}
try:
    for line in open(baseline):
        if line.startswith("#") or not line.strip():
            continue
        sc, n, w = (line.rstrip("\n").split("\t") + [""])[:3]
        base[sc], why[sc] = int(n), w
except FileNotFoundError:
    pass

if mode == "--update":
    today = datetime.date.today().isoformat()
    with open(baseline, "w") as f:
        f.write("# tokengate: user-space instructions per request under callgrind (benches/load/guard.sh).\n")
        f.write("# Checked by .ci/run: a scenario more than 3 % above its figure fails CI. To accept a\n")
        f.write("# cost, run `REASON=... bash benches/load/guard.sh --update` and say why in the commit.\n")
        f.write(f"#nreq\t{nreq}\n#nconn\t{nconn}\n")
        f.write("# scenario\tinstructions/request\twhy this figure\n")
        for sc in ("h1", "h2", "newconn", "resume"):
            w = f"{today}: {reason}" if measured[sc] != base.get(sc) else why.get(sc, "")
            f.write(f"{sc}\t{measured[sc]}\t{w}\n")
    for sc in ("h1", "h2", "newconn", "resume"):
        print(f"{sc}: {base.get(sc, '-')} -> {measured[sc]}")
    print(f"baseline written: {baseline}")
    sys.exit(0)

if not base:
    sys.exit(f"no baseline in {baseline}: run REASON=... bash benches/load/guard.sh --update")
failed = False
print(f"\n| scenario | baseline | measured | change | limit |\n|---|---:|---:|---:|---:|")
for sc, b in base.items():
    m = measured.get(sc)
    if m is None:
        print(f"| {sc} | {b:,} | missing | | |")
        failed = True
        continue
    change = (m - b) / b * 100
    verdict = ""
    if change > tol:
        verdict, failed = " FAIL", True
    elif change < -tol:
        verdict = " (cheaper: lower the baseline to keep the gain)"
    print(f"| {sc} | {b:,} | {m:,} | {change:+.1f} %{verdict} | +{tol:g} % |")
if failed:
    print(f"\nThe request path got more than {tol:g} % more expensive in instructions per request.\n"
          "Find where (callgrind_annotate on benches/load/out/instructions/tokengate.cg.*), or, if the\n"
          "cost is wanted, update the baseline in the same commit: REASON=\"...\" bash benches/load/guard.sh --update")
    sys.exit(1)
print("\nwithin the baseline")
PY

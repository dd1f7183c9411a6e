#!/usr/bin/env bash
# Tail latency at a fixed rate: nginx, HAProxy and tokengate as TLS reverse
# proxies in front of the same upstream (as compare.sh sets them up), each
# driven at the same constant rate, half of nginx's maximum, by an
# open-loop HTTP/1.1-over-TLS load tool (examples/loadgen.rs) that counts
# each request's latency from its scheduled time. Rounds are interleaved
# (nginx, HAProxy, tokengate, nginx, ...), so a busy moment of the machine
# hits every proxy alike; a spike only one proxy shows is its own.
#
#   bash benches/load/tail.sh                 # 3 rounds x 10 s per proxy (~2.5 min)
#   RATE=20000 ROUNDS=5 DUR=30 bash benches/load/tail.sh
#
# Environment:
#   RATE=N            requests/s (default: half of nginx's maximum, measured
#                     first with wrk, 50 keep-alive connections, 3 s)
#   ROUNDS, DUR       rounds, seconds of measured load per run (default 3, 10)
#   CONNS             keep-alive connections (default 50)
#   PROXIES           which proxies, in order (default "nginx haproxy tokengate")
#   UPSTREAM_KEEPALIVE_REQUESTS
#                     requests per upstream connection before the upstream
#                     closes it (default 1000, nginx's own default)
#   TAIL_PORT_BASE    first of 5 ports (default 18470: upstream, nginx,
#                     HAProxy, tokengate, tokengate admin); each one can be
#                     set alone (UPSTREAM_PORT, NGINX_PORT, HAPROXY_PORT,
#                     TG_PORT, TG_ADMIN_PORT)
#   BENCH_TOKENGATE_BIN, LOADGEN_BIN
#                     binaries to use instead of building this checkout's
#   TG_ENV            extra "NAME=value ..." for tokengate (e.g. workers)
#   TG_B_ENV, BENCH_TOKENGATE_BIN_B
#                     either one adds a second gateway, "tokengate-b", run
#                     after tokengate in every round (an A/B of two builds or
#                     two settings at the same rate, on ports base + 5 and
#                     base + 6): TG_B_ENV is its extra "NAME=value ...",
#                     BENCH_TOKENGATE_BIN_B its binary (default: tokengate's)
#   TAIL_DURING       a command run 2 s into each run, beside the load, with
#                     the proxy, the round and the output directory as $1-$3
#                     (e.g. 'perf sched record -a -o "$3/$1-$2.sched" -- sleep 3');
#                     its output goes to out/tail/<proxy>-<round>.during.txt
#
# Output: per run, loadgen's report in benches/load/out/tail/<proxy>-<round>.txt
# (with the per-request log beside it) and a table of p50/p99/p99.9/max per
# proxy (median of the rounds, and every round) with tokengate's ratio to
# the best peer.
#
# Everything listens on 127.0.0.1 only; every load run is bounded in time;
# the script stops exactly the processes it started (by pid).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$HERE/out/tail"
BASE=${TAIL_PORT_BASE:-18470}
UPSTREAM_PORT=${UPSTREAM_PORT:-$BASE}
NGINX_PORT=${NGINX_PORT:-$((BASE + 1))}
HAPROXY_PORT=${HAPROXY_PORT:-$((BASE + 2))}
TG_PORT=${TG_PORT:-$((BASE + 3))}
TG_ADMIN_PORT=${TG_ADMIN_PORT:-$((BASE + 4))}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10}
CONNS=${CONNS:-50}
PROXIES=${PROXIES:-nginx haproxy tokengate}
UPSTREAM_KEEPALIVE_REQUESTS=${UPSTREAM_KEEPALIVE_REQUESTS:-1000}
RATE=${RATE:-}
TG_ENV=${TG_ENV:-}
TG_B_ENV=${TG_B_ENV:-}
BENCH_TOKENGATE_BIN_B=${BENCH_TOKENGATE_BIN_B:-}
TG_B_PORT=${TG_B_PORT:-$((BASE + 5))}
TG_B_ADMIN_PORT=${TG_B_ADMIN_PORT:-$((BASE + 6))}
TAIL_DURING=${TAIL_DURING:-}

# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"

need_tools nginx:nginx-light haproxy:haproxy wrk:wrk curl:curl openssl:openssl python3:python3
build_tokengate
if [ -z "${LOADGEN_BIN:-}" ]; then
    log "building the load tool (release example)"
    (cd "$ROOT" && cargo build --release -q --example loadgen)
    LOADGEN_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/loadgen
fi

# ---- set-up -----------------------------------------------------------------
fresh_out_dir "$OUT"
for f in nginx-upstream.conf nginx-proxy.conf haproxy.cfg; do
    sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
        -e "s#@HAPROXY_PORT@#$HAPROXY_PORT#g" "$HERE/$f" > "$OUT/$f"
done
# The upstream closes a keep-alive connection after this many requests, as a
# default nginx does: every proxy then reconnects now and then.
sed -i "s#keepalive_requests 1000000;#keepalive_requests $UPSTREAM_KEEPALIVE_REQUESTS;#" "$OUT/nginx-upstream.conf"

declare -A PROXY_PORT=([nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [tokengate]=$TG_PORT [tokengate-b]=$TG_B_PORT)
nginx -c "$OUT/nginx-upstream.conf" -g 'daemon off;' & PIDS+=($!)
nginx -c "$OUT/nginx-proxy.conf" -g 'daemon off;' & PIDS+=($!)
haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 & PIDS+=($!)
start_tokengate() {  # name binary port admin-port "extra NAME=value ..."
    mkdir -p "$OUT/data-$1"
    # shellcheck disable=SC2086 # $5 is a list of NAME=value words
    env TOKENGATE_PUBLIC__LISTEN=127.0.0.1:$3 \
        TOKENGATE_ADMIN__LISTEN=127.0.0.1:$4 \
        TOKENGATE_UPSTREAM__URL=http://127.0.0.1:$UPSTREAM_PORT \
        TOKENGATE_STORAGE__PATH="$OUT/data-$1/tokengate.redb" \
        TOKENGATE_TLS__CERT="$OUT/cert.pem" TOKENGATE_TLS__KEY="$OUT/key.pem" \
        TOKENGATE_TOKENS__ACCESS_TTL=6h TOKENGATE_AUDIT__DESTINATION=off TOKENGATE_LOG=warn \
        TOKENGATE_ADMIN_PASSWORD=bench $5 \
        "$2" serve >"$OUT/$1.log" 2>&1 & PIDS+=($!)
}
start_tokengate tokengate "$TG_BIN" "$TG_PORT" "$TG_ADMIN_PORT" "$TG_ENV"
TG_PID=$!
declare -A ADMIN_PORT=([tokengate]=$TG_ADMIN_PORT)
GATEWAYS=(tokengate)
if [ -n "$TG_B_ENV" ] || [ -n "$BENCH_TOKENGATE_BIN_B" ]; then
    start_tokengate tokengate-b "${BENCH_TOKENGATE_BIN_B:-$TG_BIN}" "$TG_B_PORT" "$TG_B_ADMIN_PORT" "$TG_B_ENV"
    TG_B_PID=$!
    ADMIN_PORT[tokengate-b]=$TG_B_ADMIN_PORT
    GATEWAYS+=(tokengate-b)
    case " $PROXIES " in *" tokengate-b "*) ;; *) PROXIES="$PROXIES tokengate-b" ;; esac
fi

CURL=(curl -sS --max-time 5 --cacert "$OUT/cert.pem")
for i in $(seq 1 100); do
    if "${CURL[@]}" -o /dev/null "https://127.0.0.1:$TG_PORT/healthz" 2>/dev/null \
        && { [ -z "${TG_B_PID:-}" ] || "${CURL[@]}" -o /dev/null "https://127.0.0.1:$TG_B_PORT/healthz" 2>/dev/null; } \
        && "${CURL[@]}" -o /dev/null "https://127.0.0.1:$NGINX_PORT/" 2>/dev/null \
        && "${CURL[@]}" -o /dev/null "https://127.0.0.1:$HAPROXY_PORT/" 2>/dev/null; then break; fi
    [ "$i" -eq 100 ] && { log "servers did not come up"; exit 1; }
    sleep 0.1
done
kill -0 "$TG_PID" || { log "tokengate stopped"; exit 1; }
# Each gateway mints its own token; the peers ignore the header.
declare -A AUTH_OF
for g in "${GATEWAYS[@]}"; do
    refresh=$("${CURL[@]}" -u admin:bench -H 'Content-Type: application/json' -d '{"name":"bench"}' \
        "https://127.0.0.1:${ADMIN_PORT[$g]}/api/refresh-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    access=$("${CURL[@]}" "https://127.0.0.1:${PROXY_PORT[$g]}/token" -d grant_type=refresh_token -d "refresh_token=$refresh" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    AUTH_OF[$g]="Authorization: Bearer $access"
done
AUTH=${AUTH_OF[tokengate]}
for p in $PROXIES; do
    "${CURL[@]}" -H "${AUTH_OF[$p]:-$AUTH}" "https://127.0.0.1:${PROXY_PORT[$p]}/iwc/api/databases" | grep -q PRODSQL01 \
        || { log "$p does not answer"; exit 1; }
done

if [ -z "$RATE" ]; then
    log "finding nginx's maximum (wrk, $CONNS connections, 3 s)"
    wrk -t2 -c"$CONNS" -d3s -H "$AUTH" "https://127.0.0.1:$NGINX_PORT/iwc/api/databases" > "$OUT/nginx-max.txt"
    max=$(awk '/^Requests\/sec/ {print int($2)}' "$OUT/nginx-max.txt")
    RATE=$((max / 2))
    log "nginx: $max req/s; rate: $RATE req/s"
fi

# ---- load -------------------------------------------------------------------
RESULTS="$OUT/results.tsv"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for p in $PROXIES; do
        log "round $round/$ROUNDS: $p at $RATE req/s for $DUR s"
        "$LOADGEN_BIN" --url "https://127.0.0.1:${PROXY_PORT[$p]}/iwc/api/databases" -H "${AUTH_OF[$p]:-$AUTH}" \
            --rate "$RATE" --duration "$DUR" --connections "$CONNS" --cacert "$OUT/cert.pem" \
            --log "$OUT/$p-$round.log" > "$OUT/$p-$round.txt" &
        load=$!
        if [ -n "$TAIL_DURING" ]; then
            # shellcheck disable=SC2086 # a command line, split as given
            (sleep 2; timeout $((DUR + 10)) bash -c "$TAIL_DURING" _ "$p" "$round" "$OUT") \
                > "$OUT/$p-$round.during.txt" 2>&1 || true
        fi
        wait "$load"
        line=$(grep '^RESULT ' "$OUT/$p-$round.txt")
        printf '%s\t%s\t%s\n' "$p" "$round" "$line" >> "$RESULTS"
        sed -n '1,3p' "$OUT/$p-$round.txt" >&2
    done
done

python3 - "$RESULTS" "$RATE" "$DUR" "$CONNS" <<'EOF' | tee "$OUT/report.md"
import statistics, sys
path, rate, dur, conns = sys.argv[1:]
runs = {}
for line in open(path):
    proxy, rnd, result = line.rstrip("\n").split("\t")
    kv = dict(f.split("=") for f in result.split()[1:])
    runs.setdefault(proxy, []).append({k: float(v) for k, v in kv.items()})
cols = ["p50", "p99", "p999", "max"]
med = {p: {c: statistics.median(r[c] for r in rs) for c in cols + ["errors", "spiky_windows"]} for p, rs in runs.items()}
print(f"Fixed rate {rate} req/s, {conns} keep-alive connections, {dur} s per run, {len(next(iter(runs.values())))} rounds;")
print("latency in ms from each request's scheduled time (median of the rounds; every round in brackets)\n")
print("| proxy | p50 | p99 | p99.9 | max | errors | 100 ms windows with a request > 10 ms |")
print("|---|---:|---:|---:|---:|---:|---:|")
for p, rs in runs.items():
    cells = [f"{med[p][c]:.2f} ({', '.join(f'{r[c]:.1f}' for r in rs)})" for c in cols]
    print(f"| {p} | " + " | ".join(cells) + f" | {med[p]['errors']:.0f} | {med[p]['spiky_windows']:.0f} |")
peers = [p for p in runs if not p.startswith("tokengate")]
for g in (p for p in runs if p.startswith("tokengate")):
    if not peers:
        break
    print()
    for c in cols:
        best = min(med[p][c] for p in peers)
        print(f"- {g} {c}: {med[g][c] / best:.2f}x the best peer's ({best:.2f} ms)")
EOF

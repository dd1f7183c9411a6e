#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind:
# tokengate, nginx and HAProxy as TLS proxies in front of the same static JSON
# upstream, HTTP/1.1 (50 keep-alive connections) and HTTP/2 (10 connections x
# 10 streams). Unlike req/s on a shared 2-core machine, these counts repeat
# from run to run (within ~1 %), so they show where a proxy spends its work.
#
#   bash benches/load/instructions.sh            # 20,000 measured requests per case
#   NREQ=50000 bash benches/load/instructions.sh
#   METRICS_OFF=1 bash benches/load/instructions.sh  # also tokengate with metrics.enabled = false
#
# Each proxy runs alone under callgrind with one worker (one nginx worker
# process, one HAProxy thread, `public.workers = 1`); counting is switched on
# only for the measured requests, after a warm-up that opens the connections
# and fills the pools. The load generator is h2load (`--h1` for HTTP/1.1).
# Kernel work (the loopback TCP path, about half of every proxy's CPU) is not
# counted: it is much the same per request for all three.
#
# Under valgrind, the `sha2` crate cannot use the CPU's SHA extensions and
# falls back to its portable code, which makes tokengate's per-request HMAC
# check cost ~7,000 instructions instead of ~500 (`cargo bench --bench
# access_validation`: ~150 ns). The table shows tokengate's count with and
# without that portable SHA-256 code.
set -euo pipefail

NREQ=${NREQ:-20000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$HERE/out/instructions"
UPSTREAM_PORT=18090 PROXY_PORT=18453 ADMIN_PORT=18454

# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"

need_tools nginx:nginx-light haproxy:haproxy h2load:nghttp2-client valgrind:valgrind \
    curl:curl openssl:openssl python3:python3
build_tokengate
fresh_out_dir "$OUT"
# The comparison's own configs, pointed at this script's ports, with one worker each.
sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" \
    "$HERE/nginx-upstream.conf" > "$OUT/upstream.conf"
sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" -e "s#@NGINX_PORT@#$PROXY_PORT#g" \
    -e 's#worker_processes auto;#worker_processes 1;#' "$HERE/nginx-proxy.conf" > "$OUT/nginx.conf"
sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" -e "s#@HAPROXY_PORT@#$PROXY_PORT#g" \
    -e 's#nbthread 2#nbthread 1#' "$HERE/haproxy.cfg" > "$OUT/haproxy.cfg"

nginx -c "$OUT/upstream.conf" -g 'daemon off;' & PIDS+=($!)

CURL=(curl -sS --max-time 60 --cacert "$OUT/cert.pem")
wait_up() {  # url
    for _ in $(seq 1 240); do
        "${CURL[@]}" -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.5
    done
    log "$1 did not come up"; exit 1
}

RESULTS="$OUT/results.tsv"
: > "$RESULTS"
# Runs one proxy (already started under callgrind as $PID) through both cases.
measure() {  # name auth-header
    local name=$1 auth=$2 url="https://127.0.0.1:$PROXY_PORT/iwc/api/databases"
    local sc args
    for sc in h1 h2; do
        if [ "$sc" = h1 ]; then args=(--h1 -c 50); else args=(-c 10 -m 10); fi
        h2load "${args[@]}" -n 2000 -H "$auth" "$url" > /dev/null
        callgrind_control -z "$PID" > /dev/null 2>&1
        callgrind_control -i on "$PID" > /dev/null 2>&1
        h2load "${args[@]}" -n "$NREQ" -H "$auth" "$url" > "$OUT/$name-$sc.txt"
        callgrind_control -i off "$PID" > /dev/null 2>&1
        callgrind_control -d "$sc" "$PID" > /dev/null 2>&1
        grep -q "$NREQ succeeded" "$OUT/$name-$sc.txt" || { log "$name $sc: not every request succeeded"; exit 1; }
        local dump total soft
        # Dumps are numbered in order: the newest is this case's.
        dump=$(ls -v "$OUT/$name".cg.*.[0-9]* | tail -1)
        total=$(awk '/^totals:/ {print $2}' "$dump")
        soft=$(callgrind_annotate "$dump" 2>/dev/null | awk '/sha2::sha256::soft::compress/ && !n++ {gsub(",", "", $1); print $1}')
        printf '%s\t%s\t%s\t%s\n' "$name" "$sc" "$((total / NREQ))" "$(( (total - ${soft:-0}) / NREQ ))" >> "$RESULTS"
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true
}

log "nginx under callgrind"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/nginx.cg.%p" \
    nginx -c "$OUT/nginx.conf" -g 'daemon off; master_process off;' > "$OUT/nginx.log" 2>&1 & PID=$!; PIDS+=("$PID")
wait_up "https://127.0.0.1:$PROXY_PORT/"
measure nginx "Authorization: Bearer not-checked-by-nginx"

log "HAProxy under callgrind"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/haproxy.cg.%p" \
    haproxy -db -f "$OUT/haproxy.cfg" > "$OUT/haproxy.log" 2>&1 & PID=$!; PIDS+=("$PID")
wait_up "https://127.0.0.1:$PROXY_PORT/"
measure haproxy "Authorization: Bearer not-checked-by-haproxy"

measure_tokengate() {  # name metrics-enabled
    log "$1 under callgrind"
    rm -rf "$OUT/data"
    TOKENGATE_PUBLIC__LISTEN=127.0.0.1:$PROXY_PORT TOKENGATE_ADMIN__LISTEN=127.0.0.1:$ADMIN_PORT \
    TOKENGATE_PUBLIC__WORKERS=1 TOKENGATE_UPSTREAM__URL=http://127.0.0.1:$UPSTREAM_PORT \
    TOKENGATE_STORAGE__PATH="$OUT/data/tokengate.redb" \
    TOKENGATE_TLS__CERT="$OUT/cert.pem" TOKENGATE_TLS__KEY="$OUT/key.pem" \
    TOKENGATE_TOKENS__ACCESS_TTL=6h TOKENGATE_AUDIT__DESTINATION=off TOKENGATE_LOG=warn \
    TOKENGATE_METRICS__ENABLED=$2 TOKENGATE_ADMIN_PASSWORD=bench \
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$1.cg.%p" \
        "$TG_BIN" serve > "$OUT/$1.log" 2>&1 & PID=$!; PIDS+=("$PID")
    wait_up "https://127.0.0.1:$PROXY_PORT/healthz"
    local refresh access
    refresh=$("${CURL[@]}" -u admin:bench -H 'Content-Type: application/json' -d '{"name":"instructions"}' \
        "https://127.0.0.1:$ADMIN_PORT/api/refresh-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    access=$("${CURL[@]}" "https://127.0.0.1:$PROXY_PORT/token" -d grant_type=refresh_token -d "refresh_token=$refresh" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    measure "$1" "Authorization: Bearer $access"
}
measure_tokengate tokengate true
if [ "${METRICS_OFF:-0}" = 1 ]; then
    measure_tokengate tokengate-nometrics false
fi

python3 - "$RESULTS" "$NREQ" <<'EOF' | tee "$OUT/report.md"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
nreq = int(sys.argv[2])
names = {"h1": "HTTP/1.1, 50 keep-alive connections", "h2": "HTTP/2, 10 connections x 10 streams"}
print(f"User-space instructions per request (callgrind, {nreq:,} requests per case, one worker each)\n")
print("| scenario | nginx | HAProxy | tokengate | tokengate without portable SHA-256 |")
print("|---|---:|---:|---:|---:|")
by = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}
for sc in ("h1", "h2"):
    n, h, t = by[("nginx", sc)][0], by[("haproxy", sc)][0], by[("tokengate", sc)]
    print(f"| {names[sc]} | {n:,} | {h:,} | {t[0]:,} | {t[1]:,} |")
if ("tokengate-nometrics", "h1") in by:
    print("\ntokengate with metrics on vs off (metrics.enabled = false)\n")
    print("| scenario | metrics on | metrics off | on - off | on / off |")
    print("|---|---:|---:|---:|---:|")
    for sc in ("h1", "h2"):
        on, off = by[("tokengate", sc)][0], by[("tokengate-nometrics", sc)][0]
        print(f"| {names[sc]} | {on:,} | {off:,} | {on - off:+,} | {on / off:.3f} |")
EOF

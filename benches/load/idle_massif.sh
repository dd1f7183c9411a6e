#!/usr/bin/env bash
# What an idle connection holds in tokengate: a heap snapshot (valgrind
# massif) while N idle keep-alive TLS connections are open, one snapshot per
# protocol, and the same before they are opened; ms_print shows the tree of
# live allocations by call stack. Run idle.sh first (it leaves the upstream
# config and the certificate in benches/load/out/idle).
#
#   IDLE_CONNS=1000 BENCH_TOKENGATE_BIN=path bash benches/load/idle_massif.sh
#   IDLE_PORT_BASE=19300 ...   # the same ports as idle.sh
#
# Snapshots: benches/load/out/idle/massif-{h1,h2}-{before,held}.txt
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$HERE/out/idle"
BASE=${IDLE_PORT_BASE:-18470}
UPSTREAM_PORT=$BASE TG_PORT=$((BASE + 3)) TG_ADMIN_PORT=$((BASE + 4))
N=${IDLE_CONNS:-1000}
# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"
need_tools valgrind:valgrind curl:curl python3:python3 nginx:nginx-light
build_tokengate
[ -f "$OUT/upstream.conf" ] || { log "run idle.sh first"; exit 1; }
ulimit -n "$(ulimit -Hn)"
nginx -c "$OUT/upstream.conf" -g 'daemon off;' & PIDS+=($!)
CURL=(curl -sS --max-time 30 --cacert "$OUT/cert.pem")
for proto in ${PROTOCOLS:-h1 h2}; do
    rm -rf "$OUT/data"; mkdir -p "$OUT/data"
    TOKENGATE_PUBLIC__LISTEN=127.0.0.1:$TG_PORT TOKENGATE_ADMIN__LISTEN=127.0.0.1:$TG_ADMIN_PORT \
    TOKENGATE_UPSTREAM__URL=http://127.0.0.1:$UPSTREAM_PORT \
    TOKENGATE_STORAGE__PATH="$OUT/data/tokengate.redb" \
    TOKENGATE_TLS__CERT="$OUT/cert.pem" TOKENGATE_TLS__KEY="$OUT/key.pem" \
    TOKENGATE_PUBLIC__MAX_CONNECTIONS=25000 TOKENGATE_PUBLIC__MAX_CONNECTIONS_PER_CLIENT=25000 \
    TOKENGATE_PUBLIC__MAX_STREAMS_PER_CLIENT=25000 TOKENGATE_PUBLIC__IDLE_TIMEOUT=10m \
    TOKENGATE_PUBLIC__HEADER_READ_TIMEOUT=10m \
    TOKENGATE_TOKENS__ACCESS_TTL=6h TOKENGATE_AUDIT__DESTINATION=off TOKENGATE_LOG=warn \
    TOKENGATE_ADMIN_PASSWORD=bench \
        valgrind --tool=massif --vgdb=yes --depth=40 --massif-out-file="$OUT/massif-$proto.out" \
        "$TG_BIN" serve > "$OUT/massif-$proto.log" 2>&1 & pid=$!; PIDS+=("$pid")
    for _ in $(seq 1 240); do
        "${CURL[@]}" -o /dev/null "https://127.0.0.1:$TG_PORT/healthz" 2>/dev/null && break
        sleep 0.5
    done
    refresh=$("${CURL[@]}" -u admin:bench -H 'Content-Type: application/json' -d '{"name":"idle"}' \
        "https://127.0.0.1:$TG_ADMIN_PORT/api/refresh-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    access=$("${CURL[@]}" "https://127.0.0.1:$TG_PORT/token" -d grant_type=refresh_token -d "refresh_token=$refresh" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    vgdb --pid="$pid" detailed_snapshot "$OUT/massif-$proto-before.snap" > /dev/null
    IDLE_AT_HOLD="vgdb --pid=$pid detailed_snapshot $OUT/massif-$proto-held.snap > /dev/null" IDLE_DEADLINE=600 \
        python3 "$HERE/idle_client.py" "$proto" "$TG_PORT" "$pid" "$N" "$OUT/cert.pem" "Bearer $access"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    for s in before held; do
        ms_print "$OUT/massif-$proto-$s.snap" > "$OUT/massif-$proto-$s.txt" 2>&1 || true
    done
    log "$proto: $OUT/massif-$proto-held.txt"
done

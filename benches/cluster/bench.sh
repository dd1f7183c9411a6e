#!/usr/bin/env bash
# Cluster-mode benchmark (issue 11, item 10), in one run on this machine:
#
#  1. Revocation propagation: a throwaway PostgreSQL and two replicas, A and
#     B. DELETES (default 200) refresh tokens are deleted one at a time on B;
#     for each, replica A is polled with an access token of it (keep-alive,
#     every ~1 ms, at most 5 s) until it answers 401: p50, p99, max.
#  2. Throughput, replica A (postgres backend, B running) against a single
#     redb-backed gateway, interleaved round by round in the same run:
#     proxied HTTP/1.1 keep-alive requests with a bearer header and token
#     exchanges (wrk -t2 -c50, as benches/load), and the ratio postgres / redb.
#
#   bash benches/cluster/bench.sh          # 5 rounds x 8 s per load run (~ 3.5 min; a fresh build adds more)
#   bash benches/cluster/bench.sh quick    # 1 round  x 2 s per load run (~ 1 min)
#
# TOKENGATE_BIN=path runs that binary instead of this checkout's release build.
# Results: benches/cluster/out/ (summary.md, results.tsv, revocation.tsv and
# .json, the wrk outputs, the servers' logs). Everything listens on 127.0.0.1
# (free ports), every load run and loop is bounded, and on exit exactly the
# processes started here are stopped and PostgreSQL's temporary directory removed.
set -euo pipefail

MODE=${1:-full}
case "$MODE" in
    quick) ROUNDS=1; DUR=2 ;;
    full) ROUNDS=5; DUR=8 ;;
    *) echo "usage: $0 [full|quick]" >&2; exit 2 ;;
esac
DELETES=${DELETES:-200}

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LOAD=$ROOT/benches/load
OUT="$HERE/out"

# shellcheck source=benches/load/common.sh
. "$LOAD/common.sh"

need_tools nginx:nginx-light wrk:wrk curl:curl openssl:openssl python3:python3
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_tools initdb:postgresql
PGBIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
[ -x "$PGBIN/initdb" ] || { log "no PostgreSQL server binaries under /usr/lib/postgresql"; exit 1; }
build_tokengate   # sets TG_BIN

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# common.sh's clean-up, plus PostgreSQL and its directory.
PGDIR=""
PG_STARTED=0
cleanup() {
    local p i alive
    trap - EXIT INT TERM
    set +e
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for i in $(seq 1 250); do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        [ "$i" -eq 250 ] && for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ "$PG_STARTED" -eq 1 ]; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
            || as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate -w -t 30 stop >/dev/null 2>&1
    fi
    [ -n "$PGDIR" ] && { cp "$PGDIR/server.log" "$OUT/postgres.log" 2>/dev/null; rm -rf "$PGDIR"; }
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- set-up -----------------------------------------------------------------
fresh_out_dir "$OUT"   # cert.pem, key.pem for 127.0.0.1
umask 077
read -r PG_PORT A_PUBLIC A_ADMIN B_PUBLIC B_ADMIN R_PUBLIC R_ADMIN UPSTREAM_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)

# PostgreSQL: durable defaults (fsync on), only its address and socket set, and
# statements slower than 100 ms logged (out/postgres.log) to explain outliers.
PGDIR=$(mktemp -d /tmp/tokengate-bench-pg.XXXXXX)
chmod 711 "$PGDIR"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGDIR"
log "PostgreSQL on 127.0.0.1:$PG_PORT ($PGDIR)"
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U postgres -E UTF8 --locale=C --no-sync \
    >"$OUT/initdb.log" 2>&1 || { cat "$OUT/initdb.log" >&2; exit 1; }
PG_STARTED=1
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c log_min_duration_statement=100" start >/dev/null \
    || { cat "$PGDIR/server.log" >&2; exit 1; }
"$PGBIN/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "CREATE ROLE tokengate LOGIN" -c "CREATE DATABASE tokengate OWNER tokengate" >/dev/null
PG_URL="postgres://tokengate@127.0.0.1:$PG_PORT/tokengate"
head -c 32 /dev/urandom > "$OUT/secret.key"

# The stand-in API, as benches/load.
sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" "$LOAD/nginx-upstream.conf" > "$OUT/nginx-upstream.conf"
nginx -c "$OUT/nginx-upstream.conf" -g 'daemon off;' & PIDS+=($!)

# A gateway: name public admin [extra VAR=value ...]. Same settings as
# benches/load/compare.sh; the auth-failure throttle is off because the
# revocation poll ends on a 401 two hundred times from one address.
start_gateway() {
    local name=$1 public=$2 admin=$3
    shift 3
    mkdir -p "$OUT/$name"
    env -i PATH="$PATH" HOME="$OUT/$name" \
        TOKENGATE_PUBLIC__LISTEN="127.0.0.1:$public" \
        TOKENGATE_ADMIN__LISTEN="127.0.0.1:$admin" \
        TOKENGATE_UPSTREAM__URL="http://127.0.0.1:$UPSTREAM_PORT" \
        TOKENGATE_STORAGE__PATH="$OUT/$name/data/tokengate.redb" \
        TOKENGATE_TLS__CERT="$OUT/cert.pem" TOKENGATE_TLS__KEY="$OUT/key.pem" \
        TOKENGATE_TOKENS__ACCESS_TTL=6h TOKENGATE_AUDIT__DESTINATION=off TOKENGATE_LOG=warn \
        TOKENGATE_PUBLIC__AUTH_FAILURES_PER_MINUTE=0 \
        TOKENGATE_ADMIN_PASSWORD=bench \
        "$@" "$TG_BIN" serve >"$OUT/$name/tokengate.log" 2>&1 &
    PIDS+=($!)
}
PG_ENV=(TOKENGATE_STORAGE__BACKEND=postgres TOKENGATE_STORAGE__POSTGRES__URL="$PG_URL"
    TOKENGATE_STORAGE__POSTGRES__SSLMODE=disable TOKENGATE_STORAGE__SECRET_FILE="$OUT/secret.key")
start_gateway a "$A_PUBLIC" "$A_ADMIN" "${PG_ENV[@]}" TOKENGATE_CLUSTER__NAME=a
start_gateway b "$B_PUBLIC" "$B_ADMIN" "${PG_ENV[@]}" TOKENGATE_CLUSTER__NAME=b
start_gateway redb "$R_PUBLIC" "$R_ADMIN"

CURL=(curl -sS --max-time 5 --cacert "$OUT/cert.pem")
for port in $A_PUBLIC $B_PUBLIC $R_PUBLIC $UPSTREAM_PORT; do
    scheme=https; [ "$port" = "$UPSTREAM_PORT" ] && scheme=http
    for i in $(seq 1 300); do
        "${CURL[@]}" -f -o /dev/null "$scheme://127.0.0.1:$port/readyz" 2>/dev/null && break
        if [ "$i" -eq 300 ]; then
            log "127.0.0.1:$port did not become ready"
            tail -n 20 "$OUT"/*/tokengate.log >&2
            exit 1
        fi
        sleep 0.1
    done
done

# ---- 1. revocation propagation ---------------------------------------------------
log "revocation: $DELETES deletes on B, each polled on A"
REV_OK=1
python3 "$HERE/driver.py" revocation --ca "$OUT/cert.pem" --password bench \
    --a-public "https://127.0.0.1:$A_PUBLIC" --a-admin "https://127.0.0.1:$A_ADMIN" \
    --b-public "https://127.0.0.1:$B_PUBLIC" --b-admin "https://127.0.0.1:$B_ADMIN" \
    --count "$DELETES" --out "$OUT" > "$OUT/revocation.out" || REV_OK=0
[ -s "$OUT/revocation.json" ] || { cat "$OUT/revocation.out" >&2; log "the revocation phase failed"; exit 1; }

# ---- 2. throughput: postgres (A) vs redb, interleaved -----------------------------
# Two refresh tokens per gateway: one whose access token the h1 runs carry, one
# for the exchange runs (each exchange mints an access token, and one refresh
# token keeps at most tokens.max_access_per_refresh of them: the h1 token
# must not be among those evicted).
token_pair() {  # admin-port public-port -> "refresh access"
    local refresh access
    refresh=$("${CURL[@]}" -u admin:bench -H 'Content-Type: application/json' -d '{"name":"bench"}' \
        "https://127.0.0.1:$1/api/refresh-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    access=$("${CURL[@]}" "https://127.0.0.1:$2/token" -d grant_type=refresh_token -d "refresh_token=$refresh" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    echo "$refresh $access"
}
declare -A PORT REFRESH ACCESS
PORT[postgres]=$A_PUBLIC PORT[redb]=$R_PUBLIC
for pair in "postgres $A_ADMIN $A_PUBLIC" "redb $R_ADMIN $R_PUBLIC"; do
    read -r be admin public <<<"$pair"
    read -r _ access < <(token_pair "$admin" "$public")
    read -r refresh _ < <(token_pair "$admin" "$public")
    REFRESH[$be]=$refresh ACCESS[$be]=$access
done
for be in postgres redb; do
    "${CURL[@]}" -H "Authorization: Bearer ${ACCESS[$be]}" "https://127.0.0.1:${PORT[$be]}/iwc/api/databases" \
        | grep -q PRODSQL01 || { log "$be gateway does not proxy"; exit 1; }
done

RESULTS="$OUT/results.tsv"
: > "$RESULTS"
run_h1() {  # backend round
    wrk -t2 -c50 -d"${DUR}s" --latency -H "Authorization: Bearer ${ACCESS[$1]}" \
        "https://127.0.0.1:${PORT[$1]}/iwc/api/databases" > "$OUT/h1-$1-$2.txt"
    python3 "$LOAD/report.py" parse-wrk h1 "$1" "$2" < "$OUT/h1-$1-$2.txt" >> "$RESULTS"
}
run_exchange() {
    REFRESH_TOKEN=${REFRESH[$1]} wrk -t2 -c50 -d"${DUR}s" --latency -s "$LOAD/exchange.lua" \
        "https://127.0.0.1:${PORT[$1]}" > "$OUT/exchange-$1-$2.txt"
    python3 "$LOAD/report.py" parse-wrk exchange "$1" "$2" < "$OUT/exchange-$1-$2.txt" >> "$RESULTS"
}
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which backend goes first, so neither always runs on a warmer machine.
    if [ $((round % 2)) -eq 1 ]; then order="redb postgres"; else order="postgres redb"; fi
    for scenario in h1 exchange; do
        for be in $order; do
            log "round $round/$ROUNDS: $scenario $be"
            "run_$scenario" "$be" "$round"
        done
    done
done

SUMMARY_OK=1
python3 "$HERE/driver.py" summary "$OUT" "$MODE" "$ROUNDS" "$DUR" || SUMMARY_OK=0
{
    echo
    echo "binary: $TG_BIN ($("$TG_BIN" --version 2>/dev/null || echo unknown)); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "machine: $(nproc) CPUs; PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') with its default (durable) settings"
} | tee -a "$OUT/summary.md"
[ "$REV_OK" -eq 1 ] || { log "revocation phase had errors (see $OUT/revocation.json)"; exit 1; }
[ "$SUMMARY_OK" -eq 1 ] || { log "load runs had failed requests (see $OUT/results.tsv)"; exit 1; }

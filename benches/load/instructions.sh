#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind:
# tokengate, nginx and HAProxy as TLS proxies in front of the same static JSON
# upstream, HTTP/1.1 (50 keep-alive connections) and HTTP/2 (10 connections x
# 10 streams). Unlike req/s on a shared 2-core machine, these counts repeat
# from run to run (within ~1 %), so they show where a proxy spends its work.
#
#   bash benches/load/instructions.sh            # N = 20,000 requests per case, 500 new connections
#   NREQ=50000 bash benches/load/instructions.sh
#   METRICS_OFF=1 bash benches/load/instructions.sh  # also tokengate with metrics.enabled = false
#   PROXIES=tokengate bash benches/load/instructions.sh  # only these proxies (any of nginx haproxy tokengate)
#   BENCH_PORT_BASE=19100 bash benches/load/instructions.sh  # ports 19100-19102 instead of the defaults
#   CASES=resume bash benches/load/instructions.sh  # only these cases (any of h1 h2 newconn resume)
#   LOCKED=1 bash benches/load/instructions.sh  # also locked instructions per keep-alive request (locked.py)
#
# benches/load/guard.sh runs it for tokengate alone and compares the counts
# with the committed baseline (benches/load/baseline.tsv): the CI regression guard.
#
# Each proxy runs alone under callgrind with one worker (one nginx worker
# process, one HAProxy thread, `public.workers = 1`); counting is switched on
# only for the measured requests, after a warm-up that fills the pools. Every
# load run opens its own connections, so a keep-alive case is measured twice,
# with N and 2N requests over as many connections, and the difference divided
# by N: the handshakes (over a million instructions each, and not the same for
# every proxy) cancel out. newconn counts whole connections, one request each
# (ab without keep-alive). The keep-alive load generator is h2load (`--h1` for
# HTTP/1.1). resume counts a new TLS connection that resumes a session (curl,
# which keeps the session ticket between its connections, one request each
# with `Connection: close`), measured like the keep-alive cases: one curl run of
# N + 1 connections and one of 2N + 1, each starting with one full handshake,
# (C(2N + 1) - C(N + 1)) / N per resumed connection.
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
# BENCH_PORT_BASE=N moves the three ports to N, N+1, N+2 (two runs side by side).
BASE=${BENCH_PORT_BASE:-}
UPSTREAM_PORT=${BASE:-18090} PROXY_PORT=$((${BASE:-18452} + 1)) ADMIN_PORT=$((${BASE:-18452} + 2))

# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"

PROXIES=${PROXIES:-nginx haproxy tokengate}
NCONN=${NCONN:-$((NREQ / 40))}
CASES=${CASES:-h1 h2 newconn resume}
wants() { case " $PROXIES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
wants_case() { case " $CASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
tools=(h2load:nghttp2-client ab:apache2-utils valgrind:valgrind curl:curl openssl:openssl python3:python3 nginx:nginx-light)
wants haproxy && tools+=(haproxy:haproxy)
need_tools "${tools[@]}"
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
# LOCKED=1: callgrind also counts each instruction (`--dump-instr=yes`), and
# locked.py counts the locked ones (atomic read-modify-writes) per request.
LOCKED_RESULTS="$OUT/locked.tsv"
: > "$LOCKED_RESULTS"
VALGRIND=(valgrind --tool=callgrind --instr-atstart=no)
if [ "${LOCKED:-0}" = 1 ]; then VALGRIND+=(--dump-instr=yes); fi
# One instrumented load run: zero the counters, run "$@", dump as $1's case
# $2; prints "total soft dump" (all instructions, those in the portable SHA-256
# code, and the dump's file).
counted() {  # name dump-label command...
    local name=$1 label=$2; shift 2
    callgrind_control -z "$PID" > /dev/null 2>&1
    callgrind_control -i on "$PID" > /dev/null 2>&1
    "$@"
    callgrind_control -i off "$PID" > /dev/null 2>&1
    callgrind_control -d "$label" "$PID" > /dev/null 2>&1
    local dump total soft
    # Dumps are numbered in order: the newest is this run's.
    dump=$(ls -v "$OUT/$name".cg.*.[0-9]* | tail -1)
    total=$(awk '/^totals:/ {print $2}' "$dump")
    soft=$(callgrind_annotate "$dump" 2>/dev/null | awk '/sha2::sha256::soft::compress/ && !n++ {gsub(",", "", $1); print $1}')
    echo "$total ${soft:-0} $dump"
}
keepalive() {  # out-file requests h2load-args...
    local out=$1 n=$2; shift 2
    h2load "$@" -n "$n" > "$out"
    grep -q "$n succeeded" "$out" || { log "$out: not every request succeeded"; cat "$out" >&2; exit 1; }
}
fresh_conns() {  # out-file connections auth url
    ab -q -c 5 -n "$2" -H "$3" "$4" > "$1" 2>&1 || true
    grep -Eq "^Complete requests: +$2\$" "$1" && grep -Eq '^Failed requests: +0$' "$1" && ! grep -q '^Non-2xx' "$1" \
        || { log "$1: not every request succeeded"; cat "$1" >&2; exit 1; }
}
# n connections from one curl process, one request each (`Connection: close`),
# one after another: the first is a full handshake, every later one offers
# the session ticket the previous connection received. Checks that every
# request got a 200 and that only the first connection saw a certificate
# (the others resumed).
resumed_conns() {  # out-file connections auth url
    curl -sS -v --no-progress-meter --http1.1 --max-time 60 --cacert "$OUT/cert.pem" -H 'Connection: close' -H "$3" \
        -o /dev/null -w '%{stderr}status %{http_code}\n' "$4?n=[1-$2]" > /dev/null 2> "$1" || true
    local ok full
    ok=$(grep -c '^status 200$' "$1" || true)
    full=$(grep -c 'TLS handshake, Certificate (11)' "$1" || true)
    [ "$ok" = "$2" ] || { log "$1: $ok of $2 requests answered 200"; exit 1; }
    [ "$full" = 1 ] || { log "$1: $full full handshakes in $2 connections (expected 1: the others resume)"; exit 1; }
}
# Runs one proxy (already started under callgrind as $PID) through every case.
# Keep-alive cases are measured as a difference: a run of NREQ requests and a
# run of 2 x NREQ over the same number of new connections; (C(2N) - C(N)) / N
# is the cost of a request alone, with the connections' handshakes (over a
# million instructions each, and not the same for every proxy) cancelled out.
measure() {  # name auth-header
    local name=$1 auth=$2 url="https://127.0.0.1:$PROXY_PORT/iwc/api/databases"
    local sc args a b
    for sc in h1 h2; do
        wants_case "$sc" || continue
        if [ "$sc" = h1 ]; then args=(--h1 -c 50 -H "$auth" "$url"); else args=(-c 10 -m 10 -H "$auth" "$url"); fi
        keepalive "$OUT/$name-$sc-warm.txt" 2000 "${args[@]}"
        read -r -a a <<< "$(counted "$name" "$sc-n" keepalive "$OUT/$name-$sc-n.txt" "$NREQ" "${args[@]}")"
        read -r -a b <<< "$(counted "$name" "$sc-2n" keepalive "$OUT/$name-$sc-2n.txt" $((2 * NREQ)) "${args[@]}")"
        [ -n "${a[1]:-}" ] && [ -n "${b[1]:-}" ] || { log "$name $sc: the measurement failed"; exit 1; }
        printf '%s\t%s\t%s\t%s\n' "$name" "$sc" $(( (b[0] - a[0]) / NREQ )) \
            $(( (b[0] - b[1] - a[0] + a[1]) / NREQ )) >> "$RESULTS"
        if [ "${LOCKED:-0}" = 1 ]; then
            printf '%s\t%s\t%s\n' "$name" "$sc" "$(python3 "$HERE/locked.py" "${a[2]}" "${b[2]}" "$NREQ")" >> "$LOCKED_RESULTS"
        fi
    done
    # One request per new TLS connection (ab without keep-alive): the
    # handshake, the first request and the close, per connection.
    if wants_case newconn; then
        fresh_conns "$OUT/$name-newconn-warm.txt" 50 "$auth" "$url"
        read -r -a a <<< "$(counted "$name" newconn fresh_conns "$OUT/$name-newconn.txt" "$NCONN" "$auth" "$url")"
        [ -n "${a[1]:-}" ] || { log "$name newconn: the measurement failed"; exit 1; }
        printf '%s\t%s\t%s\t%s\n' "$name" newconn $(( a[0] / NCONN )) $(( (a[0] - a[1]) / NCONN )) >> "$RESULTS"
    fi
    # A new TLS connection that resumes a session: the abbreviated handshake,
    # the first request and the close. Both runs start with one full
    # handshake, which the difference cancels.
    if wants_case resume; then
        resumed_conns "$OUT/$name-resume-warm.txt" 20 "$auth" "$url"
        read -r -a a <<< "$(counted "$name" resume-n resumed_conns "$OUT/$name-resume-n.txt" $((NCONN + 1)) "$auth" "$url")"
        read -r -a b <<< "$(counted "$name" resume-2n resumed_conns "$OUT/$name-resume-2n.txt" $((2 * NCONN + 1)) "$auth" "$url")"
        [ -n "${a[1]:-}" ] && [ -n "${b[1]:-}" ] || { log "$name resume: the measurement failed"; exit 1; }
        printf '%s\t%s\t%s\t%s\n' "$name" resume $(( (b[0] - a[0]) / NCONN )) \
            $(( (b[0] - b[1] - a[0] + a[1]) / NCONN )) >> "$RESULTS"
    fi
    kill "$PID"; wait "$PID" 2>/dev/null || true
}

if wants nginx; then
log "nginx under callgrind"
"${VALGRIND[@]}" --callgrind-out-file="$OUT/nginx.cg.%p" \
    nginx -c "$OUT/nginx.conf" -g 'daemon off; master_process off;' > "$OUT/nginx.log" 2>&1 & PID=$!; PIDS+=("$PID")
wait_up "https://127.0.0.1:$PROXY_PORT/"
measure nginx "Authorization: Bearer not-checked-by-nginx"
fi

if wants haproxy; then
log "HAProxy under callgrind"
"${VALGRIND[@]}" --callgrind-out-file="$OUT/haproxy.cg.%p" \
    haproxy -db -f "$OUT/haproxy.cfg" > "$OUT/haproxy.log" 2>&1 & PID=$!; PIDS+=("$PID")
wait_up "https://127.0.0.1:$PROXY_PORT/"
measure haproxy "Authorization: Bearer not-checked-by-haproxy"
fi

# The bench token is restricted as a production token would be, with
# limits every measured request meets (a GET under /iwc/api/, from
# loopback, far below the rate), so each request runs the restriction
# checks: networks, scopes and the rate bucket.
TOKEN_SPEC='{"name":"instructions","scopes":[{"methods":["GET"],"path":"/iwc/api/**"}],"networks":["127.0.0.0/8"],"rate_limit":{"per_second":1000000,"burst":1000000}}'
measure_tokengate() {  # name metrics-enabled
    log "$1 under callgrind"
    rm -rf "$OUT/data"
    TOKENGATE_PUBLIC__LISTEN=127.0.0.1:$PROXY_PORT TOKENGATE_ADMIN__LISTEN=127.0.0.1:$ADMIN_PORT \
    TOKENGATE_PUBLIC__WORKERS=1 TOKENGATE_UPSTREAM__URL=http://127.0.0.1:$UPSTREAM_PORT \
    TOKENGATE_STORAGE__PATH="$OUT/data/tokengate.redb" \
    TOKENGATE_TLS__CERT="$OUT/cert.pem" TOKENGATE_TLS__KEY="$OUT/key.pem" \
    TOKENGATE_TOKENS__ACCESS_TTL=6h TOKENGATE_AUDIT__DESTINATION=off TOKENGATE_LOG=warn \
    TOKENGATE_METRICS__ENABLED=$2 TOKENGATE_ADMIN_PASSWORD=bench \
        "${VALGRIND[@]}" --callgrind-out-file="$OUT/$1.cg.%p" \
        "$TG_BIN" serve > "$OUT/$1.log" 2>&1 & PID=$!; PIDS+=("$PID")
    wait_up "https://127.0.0.1:$PROXY_PORT/healthz"
    local refresh access
    refresh=$("${CURL[@]}" -u admin:bench -H 'Content-Type: application/json' -d "$TOKEN_SPEC" \
        "https://127.0.0.1:$ADMIN_PORT/api/refresh-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    access=$("${CURL[@]}" "https://127.0.0.1:$PROXY_PORT/token" -d grant_type=refresh_token -d "refresh_token=$refresh" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    measure "$1" "Authorization: Bearer $access"
}
wants tokengate && measure_tokengate tokengate true
if [ "${METRICS_OFF:-0}" = 1 ]; then
    measure_tokengate tokengate-nometrics false
fi

python3 - "$RESULTS" "$NREQ" "$NCONN" "$LOCKED_RESULTS" <<'EOF' | tee "$OUT/report.md"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
locked = {(r[0], r[1]): float(r[2]) for r in (l.rstrip("\n").split("\t") for l in open(sys.argv[4])) if len(r) == 3}
nreq, nconn = int(sys.argv[2]), int(sys.argv[3])
names = {"h1": "HTTP/1.1, 50 keep-alive connections", "h2": "HTTP/2, 10 connections x 10 streams",
         "newconn": "one request per new TLS connection (per connection)",
         "resume": "one request per new TLS connection that resumes a session (per connection)"}
print(f"User-space instructions per request (callgrind, one worker each; keep-alive cases: "
      f"(C(2N) - C(N)) / N with N = {nreq:,}, handshakes cancelled out; newconn: {nconn:,} connections; "
      f"resume: (C(2M + 1) - C(M + 1)) / M with M = {nconn:,} connections)\n")
print("| scenario | nginx | HAProxy | tokengate | tokengate without portable SHA-256 |")
print("|---|---:|---:|---:|---:|")
by = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}
cell = lambda k: f"{by[k][0]:,}" if k in by else "-"
for sc in ("h1", "h2", "newconn", "resume"):
    if not any(k[1] == sc for k in by):
        continue
    t = by.get(("tokengate", sc))
    print(f"| {names[sc]} | {cell(('nginx', sc))} | {cell(('haproxy', sc))} | "
          + (f"{t[0]:,} | {t[1]:,} |" if t else "- | - |"))
if ("tokengate-nometrics", "h1") in by:
    print("\ntokengate with metrics on vs off (metrics.enabled = false)\n")
    print("| scenario | metrics on | metrics off | on - off | on / off |")
    print("|---|---:|---:|---:|---:|")
    for sc in ("h1", "h2"):
        if (("tokengate", sc) not in by) or (("tokengate-nometrics", sc) not in by):
            continue
        on, off = by[("tokengate", sc)][0], by[("tokengate-nometrics", sc)][0]
        print(f"| {names[sc]} | {on:,} | {off:,} | {on - off:+,} | {on / off:.3f} |")
if locked:
    print("\nLocked instructions (atomic read-modify-writes) per request, the same runs (LOCKED=1, locked.py)\n")
    print("| scenario | nginx | HAProxy | tokengate |")
    print("|---|---:|---:|---:|")
    lcell = lambda k: f"{locked[k]:,.1f}" if k in locked else "-"
    for sc in ("h1", "h2"):
        if any(k[1] == sc for k in locked):
            print(f"| {names[sc]} | {lcell(('nginx', sc))} | {lcell(('haproxy', sc))} | {lcell(('tokengate', sc))} |")
EOF

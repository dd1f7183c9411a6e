#!/usr/bin/env bash
# Side-by-side load comparison: tokengate vs nginx and HAProxy as TLS reverse
# proxies in front of the same static JSON upstream, on this machine, in one
# run. Every request carries `Authorization: Bearer <access token>`; only
# tokengate checks it.
#
#   bash benches/load/compare.sh          # quick: 3 rounds x 2 s per run (~2.5 min; a fresh release build adds 5-10)
#   bash benches/load/compare.sh full     # full:  5 rounds x 8 s per run (about 13 min, more with a fresh build)
#   SCENARIOS="resume" bash benches/load/compare.sh quick
#                                         # only these scenarios (default: h1 h2 newconn resume h1rate h2rate exchange)
#   RESUME_CLIENT=curl SCENARIOS=resume bash benches/load/compare.sh quick
#                                         # the resume scenario with two curl clients instead of loadgen
#   LOADGEN_BIN=path                      # that loadgen instead of building the example
#   BENCH_PORT_BASE=19400 bash benches/load/compare.sh quick   # ports 19400-19406 instead of 18080/18443-18448
#   METRICS_OFF=1 bash benches/load/compare.sh quick
#                                         # adds a second tokengate with metrics.enabled = false
#                                         # ("tokengate-nometrics"), interleaved in the same rounds,
#                                         # and reports the on/off req/s ratio per scenario
#   RATE=30000 bash benches/load/compare.sh quick
#                                         # h1rate and h2rate at 30,000 req/s instead of 20,000
#   SYSCALLS=1 bash benches/load/compare.sh quick
#                                         # adds each proxy's system calls per request, by kind,
#                                         # for h1 and h2 (perf stat over 40,000 requests;
#                                         # SYSCALLS_NREQ=N changes the count)
#
# Scenarios (each round runs every proxy once per scenario, interleaved):
#   h1      HTTP/1.1 over TLS, 50 keep-alive connections            (wrk)
#   h2      HTTP/2 over TLS, 10 connections x 10 streams            (h2load)
#   newconn one request per new TLS connection, 50 concurrent      (2 x ab -c 25, no keep-alive)
#   resume  the same, but every connection resumes a TLS session    (loadgen --mode resume: 50
#           workers on 2 threads, `Connection: close`; each worker offers the ticket its
#           previous connection got, so only its first handshake is a full one; the run
#           fails unless every other handshake resumed. RESUME_CLIENT=curl: 2 x curl
#           --parallel-max 25 as before, checked by 40 serial connections, see below)
#   h1rate  the h1 load at a fixed rate, RATE req/s (default 20000, a multiple of 50)
#                                                                   (h2load --h1 -c50 --rps)
#   h2rate  the h2 load at a fixed rate, RATE req/s                  (h2load -c10 -m10 --rps)
#           Every proxy serves the same requests at the same pace, so their CPU per
#           request compares like for like. At full load it does not quite: a proxy
#           that falls behind gathers more requests per wake-up and per system call,
#           and spends less per request for it. RATE should be well under every
#           proxy's maximum (about half of it here).
# plus tokengate's token exchange over TLS keep-alive (wrk, 50 connections),
# and its memory: RSS idle, and per live access token after the exchanges.
#
# Everything listens on 127.0.0.1 only; every load run is bounded in time;
# the script stops exactly the processes it started (by pid).
set -euo pipefail

MODE=${1:-quick}
case "$MODE" in
    quick) ROUNDS=3; DUR=2 ;;
    full) ROUNDS=5; DUR=8 ;;
    *) echo "usage: $0 [quick|full]" >&2; exit 2 ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$HERE/out"
UPSTREAM_PORT=18080 NGINX_PORT=18443 HAPROXY_PORT=18444 TG_PORT=18445 TG_ADMIN_PORT=18446
TG_OFF_PORT=18447 TG_OFF_ADMIN_PORT=18448
# BENCH_PORT_BASE=N moves the seven ports to N .. N+6 (a run beside another).
if [ -n "${BENCH_PORT_BASE:-}" ]; then
    B=$BENCH_PORT_BASE
    UPSTREAM_PORT=$B NGINX_PORT=$((B + 1)) HAPROXY_PORT=$((B + 2)) TG_PORT=$((B + 3)) TG_ADMIN_PORT=$((B + 4))
    TG_OFF_PORT=$((B + 5)) TG_OFF_ADMIN_PORT=$((B + 6))
fi
METRICS_OFF=${METRICS_OFF:-0}
export UPSTREAM_PORT NGINX_PORT HAPROXY_PORT

# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"

need_tools nginx:nginx-light haproxy:haproxy wrk:wrk h2load:nghttp2-client ab:apache2-utils \
    curl:curl openssl:openssl python3:python3 timeout:coreutils
build_tokengate
if [ "${SYSCALLS:-0}" = 1 ]; then need_tools perf:linux-perf; fi
SCENARIOS=${SCENARIOS:-h1 h2 newconn resume h1rate h2rate exchange}
RATE=${RATE:-20000}
case "$RATE" in ''|*[!0-9]*) log "RATE is requests per second, a whole number"; exit 2 ;; esac
RATE=$((10#$RATE))
# h2load's --rps is per connection: 50 of them for h1rate, 10 for h2rate.
if [ "$RATE" -lt 50 ] || [ $((RATE % 50)) -ne 0 ]; then
    log "RATE must be a multiple of 50 (h1rate spreads it over 50 connections), at least 50"
    exit 2
fi
# The resume scenario's client: loadgen (this crate's example, cheap enough
# that the proxies set the pace), or curl (OpenSSL; two of them took 1.3-1.4
# of the machine's two CPUs at 1.6k connections/s).
RESUME_CLIENT=${RESUME_CLIENT:-loadgen}
case "$RESUME_CLIENT" in loadgen|curl) ;; *) log "RESUME_CLIENT is loadgen or curl"; exit 2 ;; esac
export RESUME_CLIENT
if [ "$RESUME_CLIENT" = loadgen ] && [ -z "${LOADGEN_BIN:-}" ]; then
    case " $SCENARIOS " in
        *" resume "*)
            log "building the load tool (release example)"
            (cd "$ROOT" && cargo build --release -q --example loadgen)
            LOADGEN_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/loadgen ;;
    esac
fi

# ---- set-up -----------------------------------------------------------------
fresh_out_dir "$OUT"
for f in nginx-upstream.conf nginx-proxy.conf haproxy.cfg; do
    sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
        -e "s#@HAPROXY_PORT@#$HAPROXY_PORT#g" "$HERE/$f" > "$OUT/$f"
done

declare -A PROXY_PID
nginx -c "$OUT/nginx-upstream.conf" -g 'daemon off;' & PIDS+=($!)
nginx -c "$OUT/nginx-proxy.conf" -g 'daemon off;' & PIDS+=($!); PROXY_PID[nginx]=$!
haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 & PIDS+=($!); PROXY_PID[haproxy]=$!
start_tokengate() {  # name port admin-port metrics-enabled
    mkdir -p "$OUT/data-$1"
    TOKENGATE_PUBLIC__LISTEN=127.0.0.1:$2 \
    TOKENGATE_ADMIN__LISTEN=127.0.0.1:$3 \
    TOKENGATE_UPSTREAM__URL=http://127.0.0.1:$UPSTREAM_PORT \
    TOKENGATE_STORAGE__PATH="$OUT/data-$1/tokengate.redb" \
    TOKENGATE_TLS__CERT="$OUT/cert.pem" TOKENGATE_TLS__KEY="$OUT/key.pem" \
    TOKENGATE_TOKENS__ACCESS_TTL=6h TOKENGATE_AUDIT__DESTINATION=off TOKENGATE_LOG=warn \
    TOKENGATE_TOKENS__MAX_ACCESS_PER_REFRESH=1000000 \
    TOKENGATE_METRICS__ENABLED=$4 TOKENGATE_ADMIN_PASSWORD=bench \
        "$TG_BIN" serve >"$OUT/$1.log" 2>&1 & PIDS+=($!); PROXY_PID[$1]=$!
}
start_tokengate tokengate "$TG_PORT" "$TG_ADMIN_PORT" true
TG_PID=${PROXY_PID[tokengate]}
TOKENGATES=("tokengate:$TG_PORT:$TG_ADMIN_PORT")
if [ "$METRICS_OFF" = 1 ]; then
    start_tokengate tokengate-nometrics "$TG_OFF_PORT" "$TG_OFF_ADMIN_PORT" false
    TOKENGATES+=("tokengate-nometrics:$TG_OFF_PORT:$TG_OFF_ADMIN_PORT")
fi

CURL=(curl -sS --max-time 5 --cacert "$OUT/cert.pem")
for i in $(seq 1 100); do
    if "${CURL[@]}" -o /dev/null "https://127.0.0.1:$TG_PORT/healthz" 2>/dev/null \
        && { [ "$METRICS_OFF" != 1 ] || "${CURL[@]}" -o /dev/null "https://127.0.0.1:$TG_OFF_PORT/healthz" 2>/dev/null; } \
        && "${CURL[@]}" -o /dev/null "https://127.0.0.1:$NGINX_PORT/" 2>/dev/null \
        && "${CURL[@]}" -o /dev/null "https://127.0.0.1:$HAPROXY_PORT/" 2>/dev/null; then break; fi
    [ "$i" -eq 100 ] && { log "servers did not come up"; exit 1; }
    sleep 0.1
done
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU time (user + system, clock ticks) of a proxy: its process and its children (nginx workers).
cpu_ticks() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)
RSS_IDLE=$(rss_kb "$TG_PID")

# The bench token is restricted as a production token would be, with
# limits every measured request meets (a GET under /iwc/api/, from
# loopback, far below the rate), so each request runs the restriction
# checks: networks, scopes and the rate bucket.
TOKEN_SPEC='{"name":"bench","scopes":[{"methods":["GET"],"path":"/iwc/api/**"}],"networks":["127.0.0.0/8"],"rate_limit":{"per_second":1000000,"burst":1000000}}'
# Each tokengate mints its own tokens: AUTH_OF[name] is the header for it.
declare -A AUTH_OF
for tg in "${TOKENGATES[@]}"; do
    IFS=: read -r name port admin <<< "$tg"
    refresh=$("${CURL[@]}" -u admin:bench -H 'Content-Type: application/json' -d "$TOKEN_SPEC" \
        "https://127.0.0.1:$admin/api/refresh-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    access=$("${CURL[@]}" "https://127.0.0.1:$port/token" -d grant_type=refresh_token -d "refresh_token=$refresh" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    AUTH_OF[$name]="Authorization: Bearer $access"
    if [ "$name" = tokengate ]; then REFRESH=$refresh; fi
done
AUTH=${AUTH_OF[tokengate]}

# Every proxy must answer the upstream's JSON; tokengate must refuse without the token.
for port in $NGINX_PORT $HAPROXY_PORT $TG_PORT; do
    "${CURL[@]}" -H "$AUTH" "https://127.0.0.1:$port/iwc/api/databases" | grep -q PRODSQL01 \
        || { log "proxy on $port does not answer"; exit 1; }
done
code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$TG_PORT/iwc/api/databases")
[ "$code" = 401 ] || { log "tokengate answered $code without a token"; exit 1; }

# ---- load -------------------------------------------------------------------
RESULTS="$OUT/results.tsv"
: > "$RESULTS"
: > "$OUT/cpu.tsv"
run_h1() {  # proxy port round
    wrk -t2 -c50 -d"${DUR}s" --latency -H "${AUTH_OF[$1]:-$AUTH}" "https://127.0.0.1:$2/iwc/api/databases" > "$OUT/h1-$1-$3.txt"
    python3 "$HERE/report.py" parse-wrk h1 "$1" "$3" < "$OUT/h1-$1-$3.txt" >> "$RESULTS"
}
run_h2() {
    h2load -c10 -m10 -t2 -D "$DUR" --warm-up-time=1 -H "${AUTH_OF[$1]:-$AUTH}" --log-file="$OUT/h2-$1-$3.log" \
        "https://127.0.0.1:$2/iwc/api/databases" > "$OUT/h2-$1-$3.txt"
    python3 "$HERE/report.py" parse-h2load h2 "$1" "$3" "$OUT/h2-$1-$3.log" < "$OUT/h2-$1-$3.txt" >> "$RESULTS"
}
# The fixed-rate runs: h2load's --rps is per connection. No warm-up, so
# the CPU counted is that of the counted requests and of the run's 10 or
# 50 handshakes (about 1-2 % of it in quick mode, alike for every proxy).
run_h1rate() {
    h2load --h1 -c50 -t2 --rps=$((RATE / 50)) -D "$DUR" -H "${AUTH_OF[$1]:-$AUTH}" --log-file="$OUT/h1rate-$1-$3.log" \
        "https://127.0.0.1:$2/iwc/api/databases" > "$OUT/h1rate-$1-$3.txt"
    python3 "$HERE/report.py" parse-h2load h1rate "$1" "$3" "$OUT/h1rate-$1-$3.log" < "$OUT/h1rate-$1-$3.txt" >> "$RESULTS"
}
run_h2rate() {
    h2load -c10 -m10 -t2 --rps=$((RATE / 10)) -D "$DUR" -H "${AUTH_OF[$1]:-$AUTH}" --log-file="$OUT/h2rate-$1-$3.log" \
        "https://127.0.0.1:$2/iwc/api/databases" > "$OUT/h2rate-$1-$3.txt"
    python3 "$HERE/report.py" parse-h2load h2rate "$1" "$3" "$OUT/h2rate-$1-$3.log" < "$OUT/h2rate-$1-$3.txt" >> "$RESULTS"
}
run_newconn() {
    # ab is single-threaded: two of them (25 connections each) keep the load
    # generator from being the limit, so the proxies' handshake cost shows.
    local a b
    ab -q -r -t "$DUR" -n 10000000 -c 25 -H "${AUTH_OF[$1]:-$AUTH}" "https://127.0.0.1:$2/iwc/api/databases" > "$OUT/newconn-$1-$3-a.txt" 2>&1 & a=$!
    ab -q -r -t "$DUR" -n 10000000 -c 25 -H "${AUTH_OF[$1]:-$AUTH}" "https://127.0.0.1:$2/iwc/api/databases" > "$OUT/newconn-$1-$3-b.txt" 2>&1 & b=$!
    wait "$a" || true
    wait "$b" || true
    python3 "$HERE/report.py" parse-ab newconn "$1" "$3" "$OUT/newconn-$1-$3-a.txt" "$OUT/newconn-$1-$3-b.txt" >> "$RESULTS"
}
# One request per new TLS connection that resumes a session. curl (OpenSSL)
# keeps the session ticket of its last connection and offers it on the next,
# even when transfers run in parallel; `Connection: close` makes every request
# a connection of its own. Two curl processes (25 connections each), like
# newconn, so one single-threaded client is not the limit; each is stopped by
# `timeout` and its URL range bounds it as well. Every answer is written as
# it completes ("status seconds" on stderr, unbuffered), so the count of 200s
# survives the stop. The clients' CPU time goes to clientcpu.tsv: the report
# shows how much of the machine they took.
RESUME_URLS=1-2000000
resume_client() {  # out-prefix auth port
    ( timeout "$DUR" curl -sS --no-progress-meter --http1.1 --parallel --parallel-max 25 \
        --cacert "$OUT/cert.pem" -H 'Connection: close' -H "$2" -o /dev/null \
        -w '%{stderr}%{http_code} %{time_total}\n' \
        "https://127.0.0.1:$3/iwc/api/databases?n=[$RESUME_URLS]" > /dev/null 2> "$1.txt" || true
      times > "$1.cpu" )
}
# With loadgen (the default): one process, 50 workers on 2 threads, each
# connecting, making one request with `Connection: close`, reading the answer
# to the proxy's close, and connecting again with the ticket its previous
# connection received. It counts the handshakes that resumed (rustls'
# handshake kind): only each worker's first may be a full one, or the run
# fails. Its CPU time goes to clientcpu.tsv as curl's did.
RESUME_WORKERS=50
run_resume_loadgen() {  # proxy port round
    local out="$OUT/resume-$1-$3" full
    ( timeout $((DUR + 20)) "$LOADGEN_BIN" --mode resume --connections "$RESUME_WORKERS" --threads 2 \
        --duration "$DUR" --warmup 0 --requests 2000000 --timeout 5 --cacert "$OUT/cert.pem" \
        -H "${AUTH_OF[$1]:-$AUTH}" --url "https://127.0.0.1:$2/iwc/api/databases" > "$out.txt" 2>&1 || true
      times > "$out.cpu" )
    python3 "$HERE/report.py" parse-loadgen resume "$1" "$3" "$out" "$OUT/resumed.tsv" \
        >> "$RESULTS" 2>> "$OUT/clientcpu.tsv"
    full=$(awk -F'\t' -v p="$1" -v r="round $3" '$1 == p && $2 == r {print $4 - $3}' "$OUT/resumed.tsv")
    [ "${full:-999999}" -le "$RESUME_WORKERS" ] \
        || { log "$1 round $3: $full full handshakes, more than one per worker ($RESUME_WORKERS)"; exit 1; }
}
run_resume() {
    if [ "$RESUME_CLIENT" = loadgen ]; then run_resume_loadgen "$@"; return; fi
    local a b
    resume_client "$OUT/resume-$1-$3-a" "${AUTH_OF[$1]:-$AUTH}" "$2" & a=$!
    resume_client "$OUT/resume-$1-$3-b" "${AUTH_OF[$1]:-$AUTH}" "$2" & b=$!
    wait "$a" || true
    wait "$b" || true
    python3 "$HERE/report.py" parse-curl resume "$1" "$3" "$DUR" "$OUT/resume-$1-$3-a" "$OUT/resume-$1-$3-b" \
        >> "$RESULTS" 2>> "$OUT/clientcpu.tsv"
}
# With RESUME_CLIENT=curl: do the proxies really resume? 40 connections from one curl, one after
# another: a connection that got a certificate was a full handshake. Only the
# first may be (no ticket yet); the run fails otherwise. Run before and after
# the rounds; the report shows both. (In the load, a curl process makes full
# handshakes only until its first ticket arrives: at most its first 25
# connections; from then on it offers its latest session on every one.)
check_resumed() {  # when
    local proxy name port full
    for proxy in nginx:$NGINX_PORT haproxy:$HAPROXY_PORT "${TOKENGATES[@]%:*}"; do
        name=${proxy%%:*} port=${proxy##*:}
        curl -sS -v --no-progress-meter --http1.1 --max-time 30 --cacert "$OUT/cert.pem" \
            -H 'Connection: close' -H "${AUTH_OF[$name]:-$AUTH}" -o /dev/null -w '%{stderr}status %{http_code}\n' \
            "https://127.0.0.1:$port/iwc/api/databases?n=[1-40]" > /dev/null 2> "$OUT/resumed-$name-$1.txt" || true
        full=$(grep -c 'TLS handshake, Certificate (11)' "$OUT/resumed-$name-$1.txt" || true)
        [ "$(grep -c '^status 200$' "$OUT/resumed-$name-$1.txt" || true)" = 40 ] \
            || { log "$name: not every request of the resumption check answered 200"; exit 1; }
        printf '%s\t%s\t%s\t%s\n' "$name" "$1" $((40 - full)) 40 >> "$OUT/resumed.tsv"
        [ "$full" = 1 ] || { log "$name resumed only $((40 - full)) of 40 connections"; exit 1; }
    done
}
run_exchange() {
    REFRESH_TOKEN=$REFRESH wrk -t2 -c50 -d"${DUR}s" --latency -s "$HERE/exchange.lua" "https://127.0.0.1:$TG_PORT" > "$OUT/exchange-$1.txt"
    python3 "$HERE/report.py" parse-wrk exchange tokengate "$1" < "$OUT/exchange-$1.txt" >> "$RESULTS"
}

: > "$OUT/clientcpu.tsv"
: > "$OUT/resumed.tsv"
if [ "$RESUME_CLIENT" = curl ]; then
    case " $SCENARIOS " in *" resume "*) check_resumed before ;; esac
fi
for round in $(seq 1 "$ROUNDS"); do
    for scenario in ${SCENARIOS//exchange/}; do
        for proxy in nginx:$NGINX_PORT haproxy:$HAPROXY_PORT "${TOKENGATES[@]%:*}"; do
            name=${proxy%%:*}
            log "round $round/$ROUNDS: $scenario $name"
            before=$(cpu_ticks "${PROXY_PID[$name]}")
            "run_$scenario" "$name" "${proxy##*:}" "$round"
            after=$(cpu_ticks "${PROXY_PID[$name]}")
            printf '%s\t%s\t%s\t%s\n' "$scenario" "$name" "$round" "$(( (after - before) * 1000000 / HZ ))" >> "$OUT/cpu.tsv"
        done
    done
done
if [ "$RESUME_CLIENT" = curl ]; then
    case " $SCENARIOS " in *" resume "*) check_resumed after ;; esac
fi
# SYSCALLS=1: each proxy's system calls per request, by kind, for HTTP/1.1
# and HTTP/2 (perf's syscall tracepoints on the proxy's processes over a
# fixed count of requests, h2load for both: --h1 -c50, and -c10 -m10). What
# the instruction counts cannot show: how many reads and writes (each a TLS
# record, a loopback send and a wake-up for the client) a request costs.
syscalls_per_request() {
    local n=${SYSCALLS_NREQ:-40000} kinds="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait futex"
    local ev="-e raw_syscalls:sys_enter" k proxy c pids args name done_n
    for k in $kinds; do ev="$ev -e syscalls:sys_enter_$k"; done
    for c in h1 h2; do
        case " $SCENARIOS " in *" $c "*) ;; *) continue ;; esac
        for proxy in nginx:$NGINX_PORT haproxy:$HAPROXY_PORT "${TOKENGATES[@]%:*}"; do
            name=${proxy%%:*}
            if [ "$c" = h1 ]; then args=(--h1 -c50); else args=(-c10 -m10); fi
            pids=$(echo "${PROXY_PID[$name]}" $(pgrep -P "${PROXY_PID[$name]}" || true) | tr ' ' ,)
            log "system calls: $c $name"
            # shellcheck disable=SC2086  # $ev is a list of perf arguments
            timeout 60 perf stat -x, $ev -p "$pids" -o "$OUT/syscalls-$c-$name.csv" -- \
                timeout 50 h2load -n "$n" -t2 "${args[@]}" -H "${AUTH_OF[$name]:-$AUTH}" \
                "https://127.0.0.1:${proxy##*:}/iwc/api/databases" > "$OUT/syscalls-$c-$name.txt" 2>&1 || true
            # perf refuses the whole list when one tracepoint is missing (an
            # arm64 kernel has no epoll_wait): say so and go on.
            if [ ! -s "$OUT/syscalls-$c-$name.csv" ]; then
                printf '| %s | %s | - | perf counted nothing (see %s) |\n' "$c" "$name" "syscalls-$c-$name.txt" >> "$OUT/syscalls.md"
                continue
            fi
            # Per request h2load reports as succeeded, not per request asked for.
            done_n=$(sed -nE 's/^requests: .* ([0-9]+) succeeded.*/\1/p' "$OUT/syscalls-$c-$name.txt")
            [ "${done_n:-0}" -gt 0 ] || done_n=0
            python3 - "$OUT/syscalls-$c-$name.csv" "$done_n" "$c" "$name" <<'PY' >> "$OUT/syscalls.md" || true
import sys
path, n, case, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if n == 0:
    print(f"| {case} | {name} | - | no request succeeded |")
    sys.exit()
counts = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit() and float(f[0]) > 0:
        counts[f[2].split(":")[-1].replace("sys_enter_", "").replace("sys_enter", "all")] = float(f[0]) / n
parts = " ".join(f"{k} {v:.2f}" for k, v in counts.items() if k != "all")
print(f"| {case} | {name} | {counts.get('all', 0):.2f} | {parts} |")
PY
        done
    done
}
if [ "${SYSCALLS:-0}" = 1 ]; then
    printf '\n| case | proxy | system calls per request | by kind, per request |\n|---|---|---:|---|\n' > "$OUT/syscalls.md"
    syscalls_per_request
fi
# Exchanges last: they fill the access-token map that the memory figure reads.
for round in $(seq 1 "$ROUNDS"); do
    case " $SCENARIOS " in *" exchange "*) ;; *) break ;; esac
    log "round $round/$ROUNDS: token exchange"
    run_exchange "$round"
done
RSS_LOADED=$(rss_kb "$TG_PID")
EXCHANGES=$(awk -F'\t' '$1 == "exchange" {n += $7} END {print n + 0}' "$RESULTS")
# The live access tokens as the gateway counts them (tokens.max_access_per_refresh,
# raised above for the bench, still caps one refresh token's share): the
# memory figure is divided by these, not by the exchanges.
LIVE=$("${CURL[@]}" -u admin:bench "https://127.0.0.1:$TG_ADMIN_PORT/api/stats" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["live_access_tokens"])') || LIVE=0

RATE=$RATE python3 "$HERE/report.py" table "$RESULTS" "$OUT/cpu.tsv" "$MODE" "$ROUNDS" "$DUR" "$RSS_IDLE" "$RSS_LOADED" "$EXCHANGES" \
    "$OUT/clientcpu.tsv" "$OUT/resumed.tsv" "$LIVE" | tee "$OUT/report.md"
if [ "${SYSCALLS:-0}" = 1 ]; then tee -a "$OUT/report.md" < "$OUT/syscalls.md"; fi

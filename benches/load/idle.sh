#!/usr/bin/env bash
# Memory per idle keep-alive TLS connection: tokengate, nginx and HAProxy as
# TLS proxies in front of the same upstream (compare.sh's configs). For each
# protocol (HTTP/1.1, HTTP/2) the three proxies are started fresh; for each,
# RSS (summed over its processes: nginx's workers too) is read, N connections
# are opened, each makes one authorised GET (HTTP/1.1 keep-alive; HTTP/2 one
# stream, ALPN h2) and stays open and idle, RSS is read again once it has
# settled, and the connections are closed. Reports KiB per connection and
# the ratio to nginx.
#
#   bash benches/load/idle.sh                     # N = 10,000
#   IDLE_CONNS=1000 bash benches/load/idle.sh
#   PROXIES=tokengate bash benches/load/idle.sh   # only these (any of nginx haproxy tokengate)
#   PROTOCOLS=h1 bash benches/load/idle.sh        # only these (h1 h2)
#   IDLE_PORT_BASE=19300 bash benches/load/idle.sh  # ports 19300-19304 instead of 18470-18474
#   BENCH_TOKENGATE_BIN=path bash benches/load/idle.sh  # that binary instead of a release build
#
# What the bench's own configs change so that 10,000 connections from
# 127.0.0.1 are taken and stay open (compare.sh's configs are not touched):
#   nginx:     worker_connections 8192 -> 16384, worker_rlimit_nofile 20000,
#              keepalive_timeout 120s -> 600s (opening 10,000 takes about a minute)
#   HAProxy:   maxconn 8000 -> 12000, ulimit-n 20000 and no strict-limits
#              (its own sum for 12000 is 24017 descriptors, above the hard
#              limit of 20000 here; idle connections need only one each), timeout client and
#              http-keep-alive 600s (an idle HTTP/2 client is timed by these)
#   tokengate: public.max_connections 25000, max_connections_per_client
#              25000, max_streams_per_client 25000, idle_timeout 10m and
#              header_read_timeout 10m (hyper times an idle HTTP/1.1
#              connection's wait for its next request head with it: at the
#              default 30 s, connections opened early close while the last
#              ones open)
#   and the shell's open-file limit raised to its hard limit (>= 20,000 needed).
#
# Everything listens on 127.0.0.1; every step is bounded in time; the script
# stops exactly the processes it started (by pid).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$HERE/out/idle"
BASE=${IDLE_PORT_BASE:-18470}
UPSTREAM_PORT=$BASE NGINX_PORT=$((BASE + 1)) HAPROXY_PORT=$((BASE + 2)) TG_PORT=$((BASE + 3)) TG_ADMIN_PORT=$((BASE + 4))
N=${IDLE_CONNS:-10000}
PROXIES=${PROXIES:-nginx haproxy tokengate}
PROTOCOLS=${PROTOCOLS:-h1 h2}

# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"

ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((N + 500)) ]; then
    log "open-file limit $(ulimit -n) is too low for $N connections (the client and each proxy need one per connection)"
    exit 1
fi

wants() { case " $PROXIES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
tools=(curl:curl openssl:openssl python3:python3 nginx:nginx-light)
wants haproxy && tools+=(haproxy:haproxy)
need_tools "${tools[@]}"
build_tokengate
fresh_out_dir "$OUT"
sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" "$HERE/nginx-upstream.conf" \
    | sed -e 's#worker_connections 4096;#worker_connections 16384;#' > "$OUT/upstream.conf"
sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
    -e 's#^events { worker_connections 8192; }#worker_rlimit_nofile 20000;\nevents { worker_connections 16384; }#' \
    -e 's#keepalive_timeout 120s;#keepalive_timeout 600s;#' \
    "$HERE/nginx-proxy.conf" > "$OUT/nginx.conf"
sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" -e "s#@HAPROXY_PORT@#$HAPROXY_PORT#g" \
    -e 's#maxconn 8000#maxconn 12000\n    ulimit-n 20000\n    no strict-limits#' \
    -e 's#timeout client 60s#timeout client 600s#' -e 's#timeout http-keep-alive 120s#timeout http-keep-alive 600s#' \
    "$HERE/haproxy.cfg" > "$OUT/haproxy.cfg"
grep -q 'worker_connections 16384' "$OUT/nginx.conf" && grep -q 'maxconn 12000' "$OUT/haproxy.cfg" \
    || { log "could not raise the connection limits in the bench's configs"; exit 1; }

nginx -c "$OUT/upstream.conf" -g 'daemon off;' & PIDS+=($!)
CURL=(curl -sS --max-time 10 --cacert "$OUT/cert.pem")
wait_up() {  # url
    for _ in $(seq 1 100); do
        "${CURL[@]}" -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    log "$1 did not come up"; exit 1
}
stop() {  # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

RESULTS="$OUT/results.tsv"
: > "$RESULTS"
measure() {  # name proto port pid auth
    log "$1 $2: $N idle connections"
    local line
    line=$(IDLE_DEADLINE=300 python3 "$HERE/idle_client.py" "$2" "$3" "$4" "$N" "$OUT/cert.pem" "$5")
    printf '%s\t%s\n' "$1" "$line" | tee -a "$RESULTS" >&2
}

for proto in $PROTOCOLS; do
    if wants nginx; then
        nginx -c "$OUT/nginx.conf" -g 'daemon off;' & pid=$!; PIDS+=("$pid")
        wait_up "https://127.0.0.1:$NGINX_PORT/"
        measure nginx "$proto" "$NGINX_PORT" "$pid" "Bearer not-checked-by-nginx"
        stop "$pid"
    fi
    if wants haproxy; then
        haproxy -db -f "$OUT/haproxy.cfg" > "$OUT/haproxy-$proto.log" 2>&1 & pid=$!; PIDS+=("$pid")
        wait_up "https://127.0.0.1:$HAPROXY_PORT/"
        measure haproxy "$proto" "$HAPROXY_PORT" "$pid" "Bearer not-checked-by-haproxy"
        stop "$pid"
    fi
    if wants tokengate; then
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
            "$TG_BIN" serve > "$OUT/tokengate-$proto.log" 2>&1 & pid=$!; PIDS+=("$pid")
        wait_up "https://127.0.0.1:$TG_PORT/healthz"
        refresh=$("${CURL[@]}" -u admin:bench -H 'Content-Type: application/json' -d '{"name":"idle"}' \
            "https://127.0.0.1:$TG_ADMIN_PORT/api/refresh-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
        access=$("${CURL[@]}" "https://127.0.0.1:$TG_PORT/token" -d grant_type=refresh_token -d "refresh_token=$refresh" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
        measure tokengate "$proto" "$TG_PORT" "$pid" "Bearer $access"
        stop "$pid"
    fi
done

python3 - "$RESULTS" "$N" <<'EOF' | tee "$OUT/report.md"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
n = int(sys.argv[2])
print(f"RSS per idle keep-alive TLS connection ({n:,} open, each after one request; "
      "RSS after minus before, summed over the proxy's processes)\n")
print("| protocol | proxy | RSS before MiB | RSS after MiB | open / still open | KiB per connection | ratio to nginx |")
print("|---|---|---:|---:|---:|---:|---:|")
per = {}
for name, proto, before, after, opened, still, _secs in rows:
    per[(name, proto)] = (int(after) - int(before)) / max(int(opened), 1)
for name, proto, before, after, opened, still, _secs in rows:
    k = per[(name, proto)]
    ref = per.get(("nginx", proto))
    ratio = f"{k / ref:.2f}x" if ref else "-"
    print(f"| {proto} | {name} | {int(before) / 1024:.1f} | {int(after) / 1024:.1f} | {opened} / {still} | {k:.1f} | {ratio} |")
EOF

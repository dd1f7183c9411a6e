#!/usr/bin/env bash
# Soak run: tokengate under a steady mixed load for a long while, watching for
# growth (memory, file descriptors, threads, tokens) and for any error that
# is not a deliberate one.
#
#   bash benches/soak.sh            # SOAK_SECONDS (default 600, 30..7200) of load, ~1 min more for set-up and checks
#   bash benches/soak.sh quick      # 60 s of load, for development (trends shown, not judged)
#
# The mix, all at once against one tokengate (release build), loopback only
# (the Python clients each from an address of their own in 127.0.0.0/8, as
# clients on as many hosts: public.max_connections_per_client is per address):
#   - API calls over HTTP/1.1 (wrk, 6 connections) and HTTP/2 (h2load runs of
#     10 s, 2 connections x 4 streams), each client holding a refresh token
#     from a rotating pool and exchanging it for access tokens as needed;
#   - token exchanges (wrk, 2 connections);
#   - a rotator that every 2 s creates a refresh token and deletes the oldest
#     (one-id DELETE and bulk delete, alternately) while clients use it: they
#     then get 401 / invalid_grant and move to another token, which counts as
#     an expected refusal, not an error. A 401 for an access token within its
#     lifetime whose refresh token is still pooled is the documented eviction
#     at tokens.max_access_per_refresh (the exchange clients trade the same 8
#     refresh tokens hundreds of times a second): the client exchanges again,
#     as a real script does, and the verdict checks that such refusals number
#     no more than the gateway's evictions (access_tokens_evicted);
#   - slow clients: request heads and bodies sent a byte at a time (HTTP/1.1,
#     and HTTP/2 HEADERS bytes and one-byte DATA frames), below the timeouts;
#   - idle clients: 200 silent HTTP/1.1 TLS connections, 100 HTTP/2 ones
#     (preface and SETTINGS, then silence) and 20 TCP connections that never
#     start TLS, reopened whenever the gateway closes them;
#   - clients that make the upstream slow: late answers, dripped bodies,
#     answers after upstream.response_timeout (a deliberate 504) and clients
#     hanging up mid-wait.
# Every SOAK_SAMPLE_SECONDS (5) it samples tokengate's RSS, open fds, threads
# and CPU time from /proc, and live access / refresh tokens, public
# connections and evicted access tokens from GET /api/stats (parsed as JSON),
# into benches/load/out/soak/samples.csv.
#
# Verdict (exit 1 when any fails): over the second half of the run, RSS grows
# at most SOAK_RSS_SLOPE_MAX MB/min (1) and open fds at most SOAK_FD_SLOPE_MAX
# per minute (5) -- judged only for runs of 300 s or more, since the first 2-3
# minutes are warm-up; zero unexpected errors (5xx other than the deliberate 504s,
# connection errors, refusals of tokens that were still valid beyond the
# evictions); the gateway
# is alive at the end, its public connections drop to 0 once the clients
# stop, deleting every refresh token leaves 0 live access tokens, and it
# exits 0 on SIGTERM.
#
# Every loop is bounded in count and time; the script stops exactly the
# processes it started (by pid, common.sh's PIDS).
set -euo pipefail

SECONDS_WANTED=${SOAK_SECONDS:-600}
case "${1:-}" in
    quick) SECONDS_WANTED=60 ;;
    "") ;;
    *) echo "usage: $0 [quick]   (SOAK_SECONDS=N sets the length, 30..7200)" >&2; exit 2 ;;
esac
if ! [[ "$SECONDS_WANTED" =~ ^[0-9]+$ ]] || [ "$SECONDS_WANTED" -lt 30 ] || [ "$SECONDS_WANTED" -gt 7200 ]; then
    echo "SOAK_SECONDS must be a whole number of seconds, 30..7200" >&2
    exit 2
fi
DUR=$SECONDS_WANTED
SAMPLE=${SOAK_SAMPLE_SECONDS:-5}
export SOAK_SAMPLE_SECONDS=$SAMPLE
# Access tokens live long enough to be used, short enough that the sweeper
# keeps their number level well before the second half of the run.
if [ "$DUR" -lt 300 ]; then ACCESS_TTL=20s; else ACCESS_TTL=60s; fi
POOL_SIZE=8
export SOAK_POOL_SIZE=$POOL_SIZE
ROTATE_EVERY=2

HERE=$(cd "$(dirname "$0")/load" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SOAK="$ROOT/benches/soak"
OUT="$HERE/out/soak"
BASE=${SOAK_PORT_BASE:-18600}
UPSTREAM_PORT=$BASE SLOW_PORT=$((BASE + 1)) TG_PORT=$((BASE + 2)) TG_ADMIN_PORT=$((BASE + 3))
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/tokengate"
PASSWORD=soak-$$-$RANDOM

# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"

need_tools nginx:nginx-light wrk:wrk h2load:nghttp2-client curl:curl openssl:openssl python3:python3
# The soak's clients speak HTTP/2 with the Python h2 package: installed into
# a virtual environment of the soak's own (target/soak-venv), never into
# the user's Python.
VENV=$ROOT/target/soak-venv
if [ ! -x "$VENV/bin/python3" ]; then
    log "creating $VENV for the soak's Python clients"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        need_tools "_python3_venv_:python3-venv"
        python3 -m venv "$VENV"
    fi
fi
"$VENV/bin/python3" -c 'import h2' 2>/dev/null || {
    log "installing the Python h2 package (pinned in tests/attacks/requirements.txt) into $VENV"
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check "$(grep '^h2==' "$ROOT/tests/attacks/requirements.txt")"
}
PY=$VENV/bin/python3
for port in $UPSTREAM_PORT $SLOW_PORT $TG_PORT $TG_ADMIN_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "port $port is in use (set SOAK_PORT_BASE to move the four ports)"; exit 1
    fi
done
build_tokengate

# ---- set-up -----------------------------------------------------------------
fresh_out_dir "$OUT"
mkdir -p "$OUT/data" "$OUT/h2" "$OUT/nginx-tmp"
sed -e "s#@OUT@#$OUT#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" -e "s#@SLOW_PORT@#$SLOW_PORT#g" \
    "$SOAK/nginx-upstream.conf" > "$OUT/nginx-upstream.conf"

"$PY" "$SOAK/soak.py" slow-upstream "$SLOW_PORT" 2>"$OUT/slow-upstream.log" & PIDS+=($!)
nginx -c "$OUT/nginx-upstream.conf" -g 'daemon off;' & PIDS+=($!)
TOKENGATE_PUBLIC__LISTEN=127.0.0.1:$TG_PORT \
TOKENGATE_ADMIN__LISTEN=127.0.0.1:$TG_ADMIN_PORT \
TOKENGATE_UPSTREAM__URL=http://127.0.0.1:$UPSTREAM_PORT \
TOKENGATE_UPSTREAM__RESPONSE_TIMEOUT=4s \
TOKENGATE_STORAGE__PATH="$OUT/data/tokengate.redb" \
TOKENGATE_TLS__CERT="$OUT/cert.pem" TOKENGATE_TLS__KEY="$OUT/key.pem" \
TOKENGATE_TOKENS__ACCESS_TTL=$ACCESS_TTL TOKENGATE_TOKENS__SWEEP_INTERVAL=5s \
TOKENGATE_AUDIT__DESTINATION="$OUT/audit.jsonl" TOKENGATE_LOG=warn \
TOKENGATE_ADMIN_PASSWORD=$PASSWORD \
    "$BIN" serve >"$OUT/tokengate.log" 2>&1 & TG_PID=$!
PIDS+=("$TG_PID")

CURL=(curl -sS --max-time 10 --cacert "$OUT/cert.pem")
ADMIN="https://127.0.0.1:$TG_ADMIN_PORT"
GW="https://127.0.0.1:$TG_PORT"
for i in $(seq 1 100); do
    if "${CURL[@]}" -o /dev/null "$GW/healthz" 2>/dev/null \
        && "${CURL[@]}" -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/" 2>/dev/null \
        && "${CURL[@]}" -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/iwc/api/slow?ms=1" 2>/dev/null; then break; fi
    [ "$i" -eq 100 ] && { log "servers did not come up"; exit 1; }
    sleep 0.1
done

# The page session the sampler reads /api/stats with (the rotator uses HTTP Basic).
"${CURL[@]}" -o /dev/null -c "$OUT/admin.cookies" -H 'Content-Type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$PASSWORD\"}" "$ADMIN/api/login"

POOL="$OUT/pool.txt"
: > "$POOL"
# Creates a refresh token named $1; prints "id token".
create_token() {
    local body
    body=$("${CURL[@]}" -u "admin:$PASSWORD" -H 'Content-Type: application/json' \
        -d "{\"name\":\"$1\"}" -w '\n%{http_code}' "$ADMIN/api/refresh-tokens") || return 1
    [ "${body##*$'\n'}" = 201 ] || return 1
    sed -n 's/.*"id":\([0-9]*\).*"token":"\(tgr_[A-Za-z0-9]*\)".*/\1 \2/p' <<<"${body%$'\n'*}"
}
for i in $(seq 1 $POOL_SIZE); do create_token "soak-initial-$i" >> "$POOL"; done
[ "$(wc -l < "$POOL")" -eq $POOL_SIZE ] || { log "could not create the refresh-token pool"; exit 1; }
in_pool() { grep -q " $1\$" "$POOL"; }

# Sanity: an exchange and a call work, a call without a token is refused.
tok=$(awk 'NR == 1 {print $2}' "$POOL")
access=$("${CURL[@]}" "$GW/token" -d grant_type=refresh_token -d "refresh_token=$tok" \
    | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
"${CURL[@]}" -H "Authorization: Bearer $access" "$GW/iwc/api/databases" | grep -q PRODSQL01 \
    || { log "tokengate does not proxy"; exit 1; }
"${CURL[@]}" -H "Authorization: Bearer $access" "$GW/iwc/api/slow?ms=10" | grep -q slow_ms \
    || { log "the slow upstream does not answer through tokengate"; exit 1; }
code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$GW/iwc/api/databases")
[ "$code" = 401 ] || { log "tokengate answered $code without a token"; exit 1; }

# ---- helpers for the background loops ---------------------------------------
# A loop runs its long commands as children and stops them if it is stopped.
CHILD=""
loop_traps() { trap '[ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null; exit 143' TERM INT; trap - EXIT; }
child() { "$@" & CHILD=$!; local rc=0; wait "$CHILD" || rc=$?; CHILD=""; return $rc; }

# HTTP/2 API calls: h2load runs of at most 5 s, each with a fresh access
# token from a random pool token. 4xx are expected only if that token was
# deleted during the run (checked after it: the pool no longer lists it).
h2_loop() {
    loop_traps; set +e
    local end=$1 run=0 line tok body code access dur rc pooled probe
    while [ "$run" -lt 10000 ]; do
        dur=$((end - $(date +%s)))
        [ "$dur" -gt 5 ] && dur=5
        [ "$dur" -lt 2 ] && break
        run=$((run + 1))
        line=$(shuf -n 1 "$POOL"); tok=${line#* }
        body=$("${CURL[@]}" -w '\n%{http_code}' "$GW/iwc/api/security/oauth/token" \
            -d grant_type=refresh_token -d "refresh_token=$tok" 2>&1)
        code=${body##*$'\n'}
        if [ "$code" != 200 ]; then
            if [ "$code" = 400 ] && grep -q invalid_grant <<<"$body" && ! in_pool "$tok"; then
                echo "400 deleted" >> "$OUT/h2-exchanges.tsv"
            else
                echo "$code unexpected" >> "$OUT/h2-exchanges.tsv"
                printf '%s\n' "$body" >> "$OUT/h2-unexpected.txt"
            fi
            sleep 0.2
            continue
        fi
        echo "200" >> "$OUT/h2-exchanges.tsv"
        access=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' <<<"$body")
        rc=0
        child h2load -c2 -m4 -t1 --rps=150 -D "$dur" -H "Authorization: Bearer $access" \
            "$GW/iwc/api/databases" > "$OUT/h2/run-$run.txt" 2>&1 || rc=$?
        pooled=0; in_pool "$tok" && pooled=1
        # With 4xx in the run, one more call says what its token became:
        # 401 invalid_token means refused (evicted, or deleted), not a fault.
        probe=-
        if grep -Eq 'status codes: [0-9]+ 2xx, [0-9]+ 3xx, [1-9][0-9]* 4xx' "$OUT/h2/run-$run.txt"; then
            body=$("${CURL[@]}" -w '\n%{http_code}' -H "Authorization: Bearer $access" \
                "$GW/iwc/api/databases" 2>&1)
            probe=${body##*$'\n'}
            [ "$probe" = 401 ] && ! grep -q invalid_token <<<"$body" && probe=401-other
        fi
        printf '%s\t%s\t%s\t%s\n' "$run" "$pooled" "$rc" "$probe" >> "$OUT/h2.tsv"
    done
}

# The rotator: every ROTATE_EVERY s a new token joins the pool and the oldest
# leaves it, then is deleted. The pool file is rewritten with mv (readers see
# the old or the new file), a token leaves it before it is deleted and joins
# it after it is created, so "not in the pool" always means "deleted".
rotator() {
    loop_traps; set +e
    local end=$1 n=0 new victim vid code
    while [ "$n" -lt 100000 ] && [ "$(date +%s)" -lt $((end - 1)) ]; do
        n=$((n + 1))
        if new=$(create_token "soak-$n") && [ -n "$new" ]; then
            echo "create 201" >> "$OUT/rotator.tsv"
            { cat "$POOL"; echo "$new"; } > "$POOL.tmp" && mv "$POOL.tmp" "$POOL"
        else
            echo "create failed" >> "$OUT/rotator.tsv"
        fi
        if [ "$(wc -l < "$POOL")" -gt $POOL_SIZE ]; then
            victim=$(head -n 1 "$POOL"); vid=${victim%% *}
            tail -n +2 "$POOL" > "$POOL.tmp" && mv "$POOL.tmp" "$POOL"
            sleep 0.2   # let readers that just picked it use it once more
            if [ $((n % 2)) -eq 0 ]; then
                code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -u "admin:$PASSWORD" -X DELETE \
                    "$ADMIN/api/refresh-tokens/$vid") || code=fail
                echo "delete $code" >> "$OUT/rotator.tsv"
            else
                code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -u "admin:$PASSWORD" \
                    -H 'Content-Type: application/json' -d "{\"ids\":[$vid]}" \
                    "$ADMIN/api/refresh-tokens/delete") || code=fail
                echo "bulk $code" >> "$OUT/rotator.tsv"
            fi
        fi
        sleep "$ROTATE_EVERY"
    done
}

# ---- the sampler ------------------------------------------------------------
HZ=$(getconf CLK_TCK)
# Prints "live refresh connections evicted" from GET /api/stats (page
# session), read as JSON (fields get added; their order is not a contract).
stats() {
    "${CURL[@]}" -b "$OUT/admin.cookies" "$ADMIN/api/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["live_access_tokens"], s["refresh_tokens"], s["public_connections"], s["access_tokens_evicted"])
' 2>>"$OUT/stats-errors.log"
}
fd_count() { local f=(/proc/"$TG_PID"/fd/*); echo "${#f[@]}"; }
sample() {  # elapsed seconds
    local rss threads cpu st
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$TG_PID/status")
    threads=$(awk '/^Threads/ {print $2}' "/proc/$TG_PID/status")
    cpu=$(awk -v hz="$HZ" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$TG_PID/stat")
    st=$(stats) || st=""
    [ -n "$st" ] || st="-1 -1 -1 -1"
    set -- "$1" $st
    echo "$1,$rss,$(fd_count),$threads,$2,$3,$4,$5,$cpu" >> "$OUT/samples.csv"
    printf '== t=%4ss rss=%6.1f MB fds=%4s threads=%2s live_access=%7s refresh=%2s conns=%4s evicted=%7s cpu=%ss\n' \
        "$1" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$(fd_count)" "$threads" "$2" "$3" "$4" "$5" "$cpu" >&2
}

# Waits at most $2 s for pid $1 to exit, then stops it.
wait_bounded() {
    local i
    for i in $(seq 1 $(($2 * 10))); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$1" 2>/dev/null; then log "pid $1 still running after $2 s: stopping it"; kill "$1" 2>/dev/null || true; fi
    wait "$1" 2>/dev/null || true
}

# ---- the load ---------------------------------------------------------------
log "soak: $DUR s of mixed load (access tokens live $ACCESS_TTL), samples every $SAMPLE s into $OUT/samples.csv"
echo "t_s,rss_kb,fds,threads,live_access,refresh,public_connections,evicted,cpu_s" > "$OUT/samples.csv"
START=$(date +%s)
END=$((START + DUR))
LOADERS=()
SOAK_POOL=$POOL SOAK_MODE=api SOAK_DELAY_MS=${SOAK_DELAY_MS:-2} SOAK_COUNTS="$OUT/wrk-api.counts" \
    wrk -t6 -c6 -d"${DUR}s" --timeout 10s -s "$SOAK/api.lua" "$GW" > "$OUT/wrk-api.txt" 2>&1 & LOADERS+=($!)
SOAK_POOL=$POOL SOAK_MODE=exchange SOAK_DELAY_MS=5 SOAK_COUNTS="$OUT/wrk-exchange.counts" \
    wrk -t2 -c2 -d"${DUR}s" --timeout 10s -s "$SOAK/api.lua" "$GW" > "$OUT/wrk-exchange.txt" 2>&1 & LOADERS+=($!)
h2_loop "$END" & LOADERS+=($!)
rotator "$END" & LOADERS+=($!)
"$PY" "$SOAK/soak.py" clients "$OUT" "$TG_PORT" "$OUT/cert.pem" "$POOL" "$DUR" 2>"$OUT/clients.log" & LOADERS+=($!)
PIDS+=("${LOADERS[@]}")

sample 0
for i in $(seq 1 $((DUR / SAMPLE))); do
    next=$((START + i * SAMPLE))
    now=$(date +%s)
    [ "$next" -gt "$now" ] && sleep $((next - now))
    kill -0 "$TG_PID" 2>/dev/null || { log "tokengate died"; break; }
    sample $((i * SAMPLE))
done

# ---- the end ----------------------------------------------------------------
log "load over: waiting for the clients to finish their last requests"
for p in "${LOADERS[@]}"; do wait_bounded "$p" 60; done
{
    if kill -0 "$TG_PID" 2>/dev/null; then echo "tokengate_alive 1"; else echo "tokengate_alive 0"; fi
    conns=-1
    for i in $(seq 1 150); do   # at most 15 s for the gateway to see every close
        read -r _ _ conns _ <<<"$(stats)" || conns=-1
        [ "${conns:--1}" = 0 ] && break
        sleep 0.1
    done
    echo "conns_after ${conns:--1}"
    echo "fds_after $(fd_count 2>/dev/null || echo -1)"
    echo "rss_kb_after $(awk '/^VmRSS/ {print $2}' "/proc/$TG_PID/status" 2>/dev/null || echo -1)"
    ids=$(awk '{printf "%s%s", sep, $1; sep = ","}' "$POOL")
    "${CURL[@]}" -o /dev/null -u "admin:$PASSWORD" -H 'Content-Type: application/json' \
        -d "{\"ids\":[$ids]}" "$ADMIN/api/refresh-tokens/delete" || true
    read -r live refresh _ evicted <<<"$(stats)" || true
    echo "live_after_delete ${live:--1}"
    echo "refresh_after_delete ${refresh:--1}"
    echo "evicted_after ${evicted:--1}"
    kill -TERM "$TG_PID" 2>/dev/null || true
    rc=-1
    for i in $(seq 1 300); do   # shutdown_grace is 20 s
        kill -0 "$TG_PID" 2>/dev/null || { rc=0; wait "$TG_PID" || rc=$?; break; }
        sleep 0.1
    done
    echo "exit_code $rc"
} > "$OUT/end.txt"
echo "audit_exchanged $(grep -c '"token.exchanged"' "$OUT/audit.jsonl" || true)" >> "$OUT/end.txt"
echo "log_errors $(grep -c ' ERROR ' "$OUT/tokengate.log" || true)" >> "$OUT/end.txt"
echo "log_warnings $(grep -c ' WARN ' "$OUT/tokengate.log" || true)" >> "$OUT/end.txt"

log "soak: $DUR s, $(date -u +%Y-%m-%dT%H:%MZ), report in $OUT/report.md"
"$PY" "$SOAK/soak.py" report "$OUT" "$DUR"

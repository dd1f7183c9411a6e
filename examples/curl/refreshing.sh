#!/usr/bin/env bash
# Calls an API behind tokengate with curl, keeping the access token fresh:
# trades the refresh token for an access token, sends it as
# `Authorization: bearer …`, trades again shortly before it expires (by the
# exchange's expires_in: when less than a quarter of its life, at most 60 s,
# is left) and once when a call is answered 401 (the gateway restarted, or the
# tokens were rotated), then repeats that call. If the refresh token itself
# was deleted or has expired, it stops with the gateway's reason.
#
#   export TOKENGATE_REFRESH_TOKEN=tgr_…                 # never on a command line
#   export TOKENGATE_URL=https://127.0.0.1:8443          # the default
#   export TOKENGATE_CACERT=certs/tokengate.crt          # optional: else the system's roots
#   examples/curl/refreshing.sh /iwc/api/databases/monitor-information [PATH…]
#
# With no PATH, it reads paths from standard input, one per line, and keeps
# its access token between them. Each answer's body goes to stdout, followed
# by a newline; what it does with tokens goes to stderr. Exit status: 0 if
# every call answered 2xx, 1 otherwise, 2 if the refresh token was refused
# (deleted, expired or mistyped: ask an administrator for a new one).
#
# TOKENGATE_REFRESH_MARGIN=SECONDS replaces the computed margin (a margin
# longer than the token's life trades before every call).
set -euo pipefail

base=${TOKENGATE_URL:-https://127.0.0.1:8443}
base=${base%/}
refresh_token=${TOKENGATE_REFRESH_TOKEN:?set TOKENGATE_REFRESH_TOKEN to the refresh token (tgr_…)}
curl_opts=(--silent --show-error --max-time 30)
if [ -n "${TOKENGATE_CACERT:-}" ]; then
    curl_opts+=(--cacert "$TOKENGATE_CACERT")
fi

access_token=""
refresh_at=0  # in $SECONDS (seconds since this script started)
body_file=$(mktemp)
trap 'rm -f "$body_file"' EXIT

# Trades the refresh token; sets access_token and refresh_at, or exits 2 if
# the gateway refuses the refresh token.
exchange() {
    local started=$SECONDS answer status lifetime margin
    # The form goes on stdin (--data-binary @-): arguments show in `ps`.
    answer=$(printf 'grant_type=refresh_token&refresh_token=%s' "$refresh_token" \
        | curl "${curl_opts[@]}" --data-binary @- --write-out '\n%{http_code}' \
            "$base/iwc/api/security/oauth/token")
    status=${answer##*$'\n'}
    answer=${answer%$'\n'*}
    # The answer is tokengate's compact JSON, read here without jq:
    # {"access_token":"tga_…","token_type":"bearer","expires_in":900}
    if [ "$status" = 400 ] && [[ $answer == *'"invalid_grant"'* ]]; then
        echo "refreshing.sh: the gateway refused the refresh token: $answer" >&2
        exit 2
    fi
    if [ "$status" != 200 ] \
        || ! [[ $answer =~ \"access_token\":\"([^\"]+)\" ]]; then
        echo "refreshing.sh: the token exchange failed (HTTP $status): $answer" >&2
        exit 1
    fi
    access_token=${BASH_REMATCH[1]}
    [[ $answer =~ \"expires_in\":([0-9]+) ]]
    lifetime=${BASH_REMATCH[1]}
    margin=$((lifetime / 4 < 60 ? lifetime / 4 : 60))
    margin=${TOKENGATE_REFRESH_MARGIN:-$margin}
    # Counted from before the request: the token's life began no earlier.
    refresh_at=$((started + lifetime - margin))
    echo "refreshing.sh: exchanged the refresh token: access token valid for $lifetime s" >&2
}

# One GET with the current access token; prints the HTTP status.
get_once() {
    # The header comes from a file descriptor, not an argument (`ps`).
    curl "${curl_opts[@]}" --output "$body_file" --write-out '%{http_code}' \
        --header @<(printf 'Authorization: bearer %s\n' "$access_token") \
        "$base$1"
}

# GET PATH: trades first if the access token is missing or due, and once
# more on a 401. Prints the body; fails unless the answer is 2xx.
call() {
    local status
    if [ -z "$access_token" ] || [ "$SECONDS" -ge "$refresh_at" ]; then
        exchange
    fi
    status=$(get_once "$1")
    if [ "$status" = 401 ]; then
        echo "refreshing.sh: $1 answered 401: exchanging the refresh token again" >&2
        exchange
        status=$(get_once "$1")
    fi
    cat "$body_file"
    echo
    case $status in
        2??) return 0 ;;
        *) echo "refreshing.sh: $1 answered $status" >&2; return 1 ;;
    esac
}

failed=0
if [ $# -gt 0 ]; then
    for path in "$@"; do
        call "$path" || failed=1
    done
else
    while IFS= read -r path; do
        [ -n "$path" ] || continue
        call "$path" || failed=1
    done
fi
exit "$failed"

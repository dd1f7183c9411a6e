#!/usr/bin/env bash
# Calls the API behind tokengate with curl, asking `tokengate access-token`
# for the token on every call (it answers from its cache until under 60 s
# remain). On a 401 (the gateway restarted), it asks once more with --force.
#
#   export TOKENGATE_GATEWAY=https://gateway.example:8443
#   export TOKENGATE_REFRESH_TOKEN_FILE=~/.nightly.token      # mode 0600
#   export TOKENGATE_CACERT=certs/tokengate.crt                # optional
#   examples/agent/curl-with-helper.sh /iwc/api/databases/monitor-information [PATH…]
set -euo pipefail

helper=(tokengate access-token)
curl_opts=(--silent --show-error --max-time 30)
if [ -n "${TOKENGATE_CACERT:-}" ]; then
    helper+=(--cacert "$TOKENGATE_CACERT")
    curl_opts+=(--cacert "$TOKENGATE_CACERT")
fi
base=${TOKENGATE_GATEWAY:?set TOKENGATE_GATEWAY to the gateway URL}
base=${base%/}

call() {
    # The token goes to curl through a header file on stdin, never a
    # command line other users could read in ps.
    printf 'Authorization: Bearer %s\n' "$1" |
        curl "${curl_opts[@]}" -H @- -w '\n%{http_code}' "$base$2"
}

for path in "$@"; do
    token=$("${helper[@]}")
    answer=$(call "$token" "$path")
    if [ "${answer##*$'\n'}" = 401 ]; then
        token=$("${helper[@]}" --force)
        answer=$(call "$token" "$path")
    fi
    printf '%s\n' "${answer%$'\n'*}"
done

# Shared by compare.sh and instructions.sh (sourced, not run): tool install,
# the release build, a throwaway certificate, and stopping exactly what was started.
# Expects HERE and ROOT to be set.

log() { printf '== %s\n' "$*" >&2; }

# Installs from Debian whatever of "command:package ..." is missing.
need_tools() {
    local need=() t
    for t in "$@"; do
        command -v "${t%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${t%%:*}" ] || need+=("${t##*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -q
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
        # Debian starts the packaged services; these scripts run their own.
        $sudo service nginx stop >/dev/null 2>&1 || true
        $sudo service haproxy stop >/dev/null 2>&1 || true
    fi
    export PATH="$PATH:/usr/sbin"
}

# BENCH_TOKENGATE_BIN=path (or TOKENGATE_BIN=path) runs that binary instead (an earlier build, to measure
# before and after a change in the same conditions); otherwise the release
# build of this checkout.
build_tokengate() {
    # TOKENGATE_BIN too (as benches/cluster and examples/cluster take it);
    # unset, since tokengate refuses unknown TOKENGATE_ variables.
    BENCH_TOKENGATE_BIN=${BENCH_TOKENGATE_BIN:-${TOKENGATE_BIN:-}}
    unset TOKENGATE_BIN
    if [ -n "${BENCH_TOKENGATE_BIN:-}" ]; then
        log "using $BENCH_TOKENGATE_BIN"
        TG_BIN=$BENCH_TOKENGATE_BIN
        return
    fi
    log "building tokengate (release)"
    (cd "$ROOT" && cargo build --release -q)
    TG_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/tokengate
}

# A fresh $1 holding a self-signed ECDSA P-256 pair for 127.0.0.1
# (cert.pem, key.pem, and combined.pem for HAProxy).
fresh_out_dir() {
    rm -rf "$1"
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
        -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
    cat "$1/cert.pem" "$1/key.pem" > "$1/combined.pem"
}

# Every process started goes into PIDS; on exit exactly those are stopped.
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

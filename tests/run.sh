#!/usr/bin/env bash
# The test command: makes sure what the browser test drives is installed
# (Debian's chromium and chromium-driver), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium + chromium-driver drive the admin page in tests/browser.rs;
# curl runs the commands `serve --dev` prints, in tests/dev_mode.rs.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
    || ! command -v curl >/dev/null 2>&1; then
    echo "tests/run.sh: installing chromium, chromium-driver and curl for the browser and dev-mode tests"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver curl
fi

cargo test "$@"

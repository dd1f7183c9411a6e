#!/usr/bin/env bash
# The test command: makes sure what the browser test drives is installed
# (Debian's chromium and chromium-driver), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    echo "tests/run.sh: installing chromium and chromium-driver for the browser test"
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
    else
        sudo apt-get update
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
    fi
fi

cargo test "$@"

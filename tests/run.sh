#!/usr/bin/env bash
# The test command: makes sure what the browser test drives is installed
# (Debian's chromium and chromium-driver), PostgreSQL's server binaries for the
# postgres backend's tests, systemd-analyze, shellcheck and Python's requests
# for the deploy and example-client tests, promtool for the metrics tests,
# the Python packages of the attack tests and schemathesis for the API
# contract test, the web servers tests/path_confusion.rs puts behind the
# gateway (nginx, apache2, caddy, tomcat10, lighttpd; node), then runs the
# whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium + chromium-driver drive the admin page in tests/browser.rs;
# curl runs the commands `serve --dev` prints, in tests/dev_mode.rs;
# haproxy stands in front of the gateway in tests/behind_haproxy.rs and of the
# cluster's replicas in tests/cluster.rs.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
    || ! command -v curl >/dev/null 2>&1 \
    || ! { command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; }; then
    echo "tests/run.sh: installing chromium, chromium-driver, curl and haproxy for the browser, dev-mode and load-balancer tests"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver curl haproxy
fi

# systemd-analyze checks deploy/tokengate.service (tests/deploy.rs; nothing is
# started); shellcheck checks examples/curl/refreshing.sh and python3's
# `requests` runs examples/python/ (tests/example_clients.rs).
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v shellcheck >/dev/null 2>&1 \
    || ! python3 -c 'import requests' >/dev/null 2>&1; then
    echo "tests/run.sh: installing systemd, shellcheck and python3-requests for the deploy and example-client tests"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y systemd shellcheck python3-requests
fi
# A python3 other than Debian's (a virtualenv, pyenv) does not see python3-requests.
if ! python3 -c 'import requests' >/dev/null 2>&1; then
    echo "tests/run.sh: installing requests with python3 -m pip for examples/python/"
    if ! python3 -m pip install --quiet --disable-pip-version-check requests; then
        echo "tests/run.sh: ERROR: could not install requests with python3 -m pip" >&2
        exit 1
    fi
fi

# promtool (Debian's prometheus package) checks every metrics scrape in
# tests/metrics.rs; only the tool is used, so the packaged server is stopped.
if ! command -v promtool >/dev/null 2>&1; then
    echo "tests/run.sh: installing prometheus for promtool (tests/metrics.rs)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
    $sudo service prometheus stop >/dev/null 2>&1 || true
fi

# PostgreSQL (server binaries only; nothing is started as a service): the
# postgres backend's tests start a throwaway server from them (tests/common/pg.rs)
# unless TOKENGATE_TEST_POSTGRES_URL names one; the outage test in
# tests/cluster.rs always starts its own, since it stops and restarts it.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "tests/run.sh: installing postgresql for the postgres backend's tests"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    # Debian's package creates and starts a "main" cluster; the tests do not use it.
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters --no-header 2>/dev/null | while read -r version name _; do
            $sudo pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
        done
    fi
fi

# tests/path_confusion.rs sends path-confusion payloads to real web servers,
# directly and through the gateway: nginx, Apache httpd, Caddy, Tomcat 10
# (with its Java runtime) and lighttpd, from Debian 12's own archive. The test
# starts its own copy of each on a free loopback port; the packaged services
# are not used, so they are kept from starting during the install (Debian's
# policy-rc.d, as container images do: three of them want port 80) and any
# that started anyway is stopped. Node (its WHATWG-URL static server) comes
# with the machine image; Debian's nodejs is installed only if it is missing.
if [ ! -x /usr/sbin/nginx ] || [ ! -x /usr/sbin/apache2 ] || ! command -v caddy >/dev/null 2>&1 \
    || [ ! -f /usr/share/tomcat10/bin/bootstrap.jar ] || ! command -v java >/dev/null 2>&1 \
    || [ ! -x /usr/sbin/lighttpd ] || ! command -v node >/dev/null 2>&1; then
    echo "tests/run.sh: installing nginx, apache2, caddy, tomcat10 and lighttpd (and nodejs if missing) as the upstreams of tests/path_confusion.rs"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    packages=(nginx apache2 caddy tomcat10 lighttpd)
    command -v node >/dev/null 2>&1 || packages+=(nodejs)
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# tests/run.sh: no service starts while packages install\nexit 101\n' \
            | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        own_policy=1
    fi
    $sudo apt-get update
    installed=0
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}" || installed=$?
    [ "$own_policy" -eq 0 ] || $sudo rm -f "$policy"
    for service in nginx apache2 caddy tomcat10 lighttpd; do
        $sudo service "$service" stop >/dev/null 2>&1 || true
    done
    if [ "$installed" -ne 0 ]; then
        echo "tests/run.sh: ERROR: could not install ${packages[*]}" >&2
        exit 1
    fi
fi

# Python packages for the HTTP/2 attack client, the raw `:path` client and the
# TLS scan (tests/attacks/, run by tests/hostile_h2.rs, tests/path_confusion.rs
# and tests/tls_scan.rs), at the pinned versions.
requirements=tests/attacks/requirements.txt
if ! python3 - "$requirements" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, _, pinned = line.partition("==")
        if version(name) != pinned:
            sys.exit(1)
PY
then
    echo "tests/run.sh: installing the Python packages of $requirements"
    if ! python3 -m pip install --quiet --disable-pip-version-check -r "$requirements"; then
        echo "tests/run.sh: ERROR: could not install $requirements with python3 -m pip" >&2
        exit 1
    fi
fi

# schemathesis fuzzes docs/openapi.json against a gateway (tests/openapi.rs),
# at the version its settings (tests/schemathesis.toml) were written for.
schemathesis_version=4.32.5
if ! python3 -c "import sys; from importlib.metadata import version; sys.exit(version('schemathesis') != '$schemathesis_version')" >/dev/null 2>&1; then
    echo "tests/run.sh: installing schemathesis $schemathesis_version with python3 -m pip for tests/openapi.rs"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-pip
    fi
    # Debian's own python3 is "externally managed" (PEP 668): its pip refuses
    # to install unless told to. A virtualenv's or pyenv's python needs no flag.
    pip=(python3 -m pip install --quiet --disable-pip-version-check)
    if ! "${pip[@]}" "schemathesis==$schemathesis_version" \
        && ! "${pip[@]}" --break-system-packages "schemathesis==$schemathesis_version"; then
        echo "tests/run.sh: ERROR: could not install schemathesis with python3 -m pip" >&2
        exit 1
    fi
fi

cargo test "$@"

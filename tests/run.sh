#!/usr/bin/env bash
# The test command: makes sure what the browser test drives is installed
# (Debian's chromium and chromium-driver), PostgreSQL's server binaries for the
# postgres backend's tests, systemd-analyze and shellcheck for the deploy and
# example-client tests, promtool for the metrics tests, the web servers the
# path-confusion tests put behind the gateway (nginx, apache2, caddy,
# tomcat10, lighttpd; node), the test identity provider (tests/oidc, npm ci),
# and the tests' Python packages (the attack
# clients, requests, schemathesis) in a virtual environment of their own,
# target/test-venv; then runs the whole suite. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium + chromium-driver drive the admin page in the browser tests;
# curl runs the commands `serve --dev` prints, in the dev-mode test;
# haproxy stands in front of the gateway in the behind_haproxy tests and of the
# cluster's replicas in the cluster tests.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
    || ! command -v curl >/dev/null 2>&1 \
    || ! { command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; }; then
    echo "tests/run.sh: installing chromium, chromium-driver, curl and haproxy for the browser, dev-mode and load-balancer tests"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver curl haproxy
fi

# systemd-analyze checks deploy/tokengate.service (tests/integration/deploy.rs;
# nothing is started); shellcheck checks examples/curl/refreshing.sh
# (tests/integration/example_clients.rs).
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v shellcheck >/dev/null 2>&1; then
    echo "tests/run.sh: installing systemd and shellcheck for the deploy and example-client tests"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y systemd shellcheck
fi

# jemalloc (the gateway's allocator, built from source by tikv-jemalloc-sys)
# needs make and a C compiler besides the linker Rust needs.
if ! command -v make >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
    echo "tests/run.sh: installing make and gcc to build jemalloc"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y make gcc
fi

# promtool (Debian's prometheus package) checks every metrics scrape in
# tests/integration/metrics.rs; only the tool is used, so the packaged server is stopped.
if ! command -v promtool >/dev/null 2>&1; then
    echo "tests/run.sh: installing prometheus for promtool (tests/integration/metrics.rs)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
    $sudo service prometheus stop >/dev/null 2>&1 || true
fi

# PostgreSQL (server binaries only; nothing is started as a service): the
# postgres backend's tests start a throwaway server from them (tests/integration/common/pg.rs)
# unless TOKENGATE_TEST_POSTGRES_URL names one; the outage test in
# tests/integration/cluster.rs always starts its own, since it stops and restarts it.
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

# tests/integration/path_confusion.rs sends path-confusion payloads to real web servers,
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
    echo "tests/run.sh: installing nginx, apache2, caddy, tomcat10 and lighttpd (and nodejs if missing) as the upstreams of tests/integration/path_confusion.rs"
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

# tests/integration/oidc.rs signs in against a real OpenID provider: panva's
# oidc-provider under Node, installed from tests/oidc/package-lock.json (the
# npm registry) into tests/oidc/node_modules, again whenever the lock file is
# newer than the install. Debian ships npm apart from nodejs.
if ! command -v npm >/dev/null 2>&1; then
    echo "tests/run.sh: installing npm for the test identity provider (tests/oidc)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y npm
fi
if [ ! -d tests/oidc/node_modules/oidc-provider ] \
    || [ tests/oidc/package-lock.json -nt tests/oidc/node_modules/.package-lock.json ]; then
    echo "tests/run.sh: installing the test identity provider into tests/oidc/node_modules (npm ci)"
    if ! npm ci --prefix tests/oidc --no-audit --no-fund; then
        echo "tests/run.sh: ERROR: npm ci in tests/oidc failed" >&2
        exit 1
    fi
fi

# Python: every package the tests use (tests/requirements.txt: the HTTP/2
# attack and TLS scan clients, requests for examples/python/, schemathesis for
# the API contract test) goes into a virtual environment of the tests' own,
# target/test-venv, never into the user's Python. The tests run that
# environment's python3 when it exists (`python3()` in
# tests/integration/common/mod.rs). It is (re)filled when the requirements
# changed since it was last filled.
venv=target/test-venv
requirements=tests/requirements.txt
stamp=$venv/installed-requirements.txt
if [ ! -x "$venv/bin/python3" ]; then
    echo "tests/run.sh: creating the tests' Python environment $venv with $(command -v python3) ($(python3 --version 2>&1))"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv (ensurepip) for `-m venv`.
        rm -rf "$venv"
        echo "tests/run.sh: installing python3-venv to create $venv"
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
        python3 -m venv "$venv"
    fi
fi
if ! cmp -s "$requirements" "$stamp"; then
    echo "tests/run.sh: installing into $venv (not your own Python), from $requirements and what it includes:"
    # The requirement lines themselves, without comments: what gets installed.
    for f in "$requirements" tests/attacks/requirements.txt; do
        sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e '/^-r /d' -e 's/^/    /' "$f"
    done
    if ! "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$requirements"; then
        echo "tests/run.sh: ERROR: could not install $requirements into $venv" >&2
        exit 1
    fi
    cp "$requirements" "$stamp"
fi

cargo test "$@"

#!/usr/bin/env bash
# Set up a fresh machine for Flask-WebSocket: system packages, a venv in
# .venv with the package (editable) and its test tools. Safe to re-run.
#
#   scripts/bootstrap.sh            # library + test and documentation tools
#
# System packages: a C compiler and libssl-dev (pip builds uWSGI from source;
# without OpenSSL headers uWSGI's WebSocket handshake support is missing).
# redis-server: the redis hub tests start their own (the service is stopped).
# nginx, haproxy, openssl, systemd: the tests of deploy/ start their own
# proxies with a certificate they make (the services are stopped), and check
# the unit with systemd-analyze. python3-doc, python-flask-doc,
# python-werkzeug-doc: their objects.inv let the docs link to Python's,
# Flask's and Werkzeug's documentation offline (docs/conf.py).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
need_apt() { dpkg -s "$1" >/dev/null 2>&1 || apt_packages+=("$1"); }
need_apt gcc
need_apt libssl-dev
need_apt python3-dev
need_apt chromium  # the browser tests (the chat, the JavaScript client) drive it with Playwright
need_apt redis-server  # the redis hub's tests start their own redis-server
need_apt nginx  # tests/test_deploy.py: deploy/nginx-*.conf for real
need_apt haproxy  # tests/test_deploy.py: deploy/haproxy.cfg for real
need_apt openssl  # tests/test_deploy.py makes a self-signed certificate
need_apt systemd  # systemd-analyze verify deploy/flask-websocket.service
need_apt python3-doc  # intersphinx inventories, offline (docs/conf.py)
need_apt python-flask-doc
need_apt python-werkzeug-doc
if [ "${#apt_packages[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo_cmd=""
        [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_packages[@]}" >/dev/null
        # The tests start redis-server, nginx and haproxy themselves: leave no
        # system service of them running.
        for service in redis-server nginx haproxy; do
            if [[ " ${apt_packages[*]} " == *" $service "* ]] && command -v service >/dev/null 2>&1; then
                $sudo_cmd service "$service" stop >/dev/null 2>&1 || true
            fi
        done
    else
        echo "bootstrap: please install ${apt_packages[*]} (no apt-get here)" >&2
        exit 1
    fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# Re-install only when the declared dependencies changed.
stamp=.venv/.flask-websocket-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ benchmarks/requirements.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test,redis,docs]"
    # the load client, and the servers benchmarks/peers.py compares (its test
    # tests/test_benchmark_peers.py starts each of them)
    .venv/bin/python -m pip install -q -r benchmarks/requirements.txt
    touch "$stamp"
fi
# uWSGI with the asyncio and greenlet loop plugins (pip's build lacks them);
# does nothing when .venv/bin/uwsgi has them already.
scripts/install-uwsgi.sh

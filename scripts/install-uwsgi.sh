#!/usr/bin/env bash
# Make .venv/bin/uwsgi a uWSGI built with the asyncio and greenlet loop plugins
# embedded. Safe to re-run: does nothing when the installed binary already has
# the pinned version and both plugins.
#
#   scripts/install-uwsgi.sh              # the project's .venv
#   VENV=/tmp/other-venv scripts/install-uwsgi.sh
#
# Why: `pip install uwsgi` builds uWSGI from source with the gevent, ugreen and
# http plugins built in, but not asyncio or greenlet, so `--asyncio N` and
# `--greenlet` (uWSGI's native async models, which flask_websocket supports
# alongside gevent, threads and processes) are unknown options. The plugins are
# embedded at build time with UWSGI_EMBED_PLUGINS; the greenlet plugin does
# `#include <greenlet/greenlet.h>`, a header that `pip install greenlet` puts
# in <venv>/include/site/python3.X/greenlet/ (and in the package directory),
# which is not on uWSGI's include path, hence CFLAGS=-I...
# pip must really rebuild (--no-binary, --force-reinstall, --no-cache-dir):
# a plain uwsgi wheel in pip's cache would otherwise be reused.
#
# The patches in scripts/patches/ are applied to the sdist first.
# uwsgi-2.0.31-ugreen-python.patch makes uGreen usable on Python 3.11: on
# stock 2.0.31 a core that suspends keeps the GIL (threads are always on since
# 2.0.27), so the next request deadlocks the worker; and all cores share one
# thread state, so they trample each other's contextvars (Flask's request
# context), handled-exception chain and (3.11+) Python data stack. The patch
# releases the GIL and gives each core its own copy of that state in the
# Python plugin's suspend/resume hooks, as greenlet does per greenlet, and sets
# uwsgi.ugreen_suspends_python, which flask_websocket checks before it accepts
# --ugreen. docs/ugreen.md has the root cause and the evidence.
# Needs gcc, python3-dev and libssl-dev (scripts/bootstrap.sh installs them;
# without libssl-dev uWSGI's WebSocket handshake support is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
# setup.cfg asks for uWSGI>=2.0.22; 2.0.31 is the version DESIGN.md measured.
version=${UWSGI_VERSION:-2.0.31}
plugins="asyncio,greenlet"
python="$venv/bin/python"
uwsgi="$venv/bin/uwsgi"

if [ ! -x "$python" ]; then
    echo "install-uwsgi: no virtualenv at $venv (run scripts/bootstrap.sh)" >&2
    exit 1
fi

patches=(scripts/patches/uwsgi-"$version"-*.patch)
[ -e "${patches[0]}" ] || patches=()
# What the build is made of; kept beside the binary to skip identical rebuilds.
recipe=$(
    echo "uwsgi $version plugins $plugins"
    for patch in "${patches[@]}"; do sha256sum "$patch"; done
)
stamp="$venv/.uwsgi-build"

# The loop plugins register the --asyncio and --greenlet options; uwsgi --help
# lists an option only when the plugin providing it is in the binary.
has_plugins() {
    [ -x "$uwsgi" ] || return 1
    [ "$("$uwsgi" --version 2>/dev/null)" = "$version" ] || return 1
    local help
    help=$("$uwsgi" --help 2>/dev/null) || return 1
    grep -qE '^ +--asyncio ' <<<"$help" && grep -qE '^ +--greenlet ' <<<"$help"
}

if has_plugins && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
    echo "install-uwsgi: $uwsgi is uWSGI $version with $plugins and ${#patches[@]} patch(es) already"
    exit 0
fi

# greenlet's header must be present before the build (gevent depends on
# greenlet, so it is normally there already).
"$python" -c 'import greenlet' 2>/dev/null || "$python" -m pip install -q greenlet
greenlet_include=$("$python" - <<'EOF'
import os, sys, sysconfig, greenlet
# pip puts package headers in <prefix>/include/site/pythonX.Y/<package>/.
site = os.path.join(sys.prefix, "include", "site",
                    "python%d.%d" % sys.version_info[:2])
if os.path.isfile(os.path.join(site, "greenlet", "greenlet.h")):
    print(site)
else:  # greenlet also ships the header inside the package
    print(os.path.dirname(os.path.dirname(greenlet.__file__)))
EOF
)
greenlet_include=$(cd "$greenlet_include" && pwd)  # absolute: pip builds elsewhere
if [ ! -f "$greenlet_include/greenlet/greenlet.h" ]; then
    echo "install-uwsgi: greenlet/greenlet.h not found under $greenlet_include" >&2
    exit 1
fi

echo "install-uwsgi: building uWSGI $version with $plugins and ${#patches[@]} patch(es) into $venv (about a minute)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q --no-deps --no-binary :all: \
    -d "$work" "uwsgi==$version"
tar -xzf "$work/uwsgi-$version.tar.gz" -C "$work"
for patch in "${patches[@]}"; do
    patch -s -p1 -d "$work/uwsgi-$version" < "$patch"
done
UWSGI_EMBED_PLUGINS="$plugins" \
CFLAGS="-I$greenlet_include${CFLAGS:+ $CFLAGS}" \
    "$python" -m pip install -q --no-cache-dir --force-reinstall --no-deps \
        "$work/uwsgi-$version"

if ! has_plugins; then
    echo "install-uwsgi: the build finished but $uwsgi lacks --asyncio/--greenlet" >&2
    exit 1
fi
echo "$recipe" > "$stamp"
echo "install-uwsgi: $uwsgi is uWSGI $version with $plugins and ${#patches[@]} patch(es)"

#!/usr/bin/env bash
# Set up Flask-WebSocket on PyPy (docs/pypy.rst): Debian's pypy3, uWSGI built
# with its PyPy plugin, and a PyPy venv, all in .pypy/ (git-ignored). The
# "continulets" model of tests/test_uwsgi_models.py runs on it.
#
#   scripts/install-pypy-uwsgi.sh           # install what is missing (idempotent)
#   scripts/install-pypy-uwsgi.sh --force   # rebuild uWSGI and the venv
#
# Steps, each skipped when already done:
#   1. apt-get install pypy3 pypy3-dev pypy3-venv (Debian bookworm: PyPy 7.3.11,
#      Python 3.9; libpypy3.9-c.so is in pypy3);
#   2. uWSGI $UWSGI_VERSION from its PyPI sdist, built with the "pypy" profile
#      (CPython runs uwsgiconfig.py; about 15 s) -> .pypy/uwsgi;
#   3. .pypy/venv: setup.cfg's install_requires except gevent (uWSGI has no
#      gevent loop under PyPy) and uWSGI (step 2), websockets pinned to
#      $WEBSOCKETS_PIN (the newest for Python 3.9, and setup.cfg's floor),
#      and this repository (editable, no dependencies);
#   4. a smoke start: the PyPy uWSGI imports flask_websocket from the repo
#      (this also compiles the plugin's cffi glue into .pypy/__pycache__).
# Then it writes .pypy/paths (key=value: uwsgi, libpypy, home,
# site_packages), which the tests read; no file, no PyPy tests.
#
# Takes about 40 s from scratch when pypy3 is installed (add about 15 s for
# apt), under a second once done. Needs gcc and root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

UWSGI_VERSION=2.0.31
WEBSOCKETS_PIN=15.0.1
DIR="$REPO/.pypy"
UWSGI="$DIR/uwsgi"
VENV="$DIR/venv"
PATHS="$DIR/paths"
START=$(date +%s)

FORCE=0
case "${1:-}" in
    --force) FORCE=1 ;;
    "") ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

say() { echo "install-pypy-uwsgi: $*"; }
die() { say "FAILED: $*" >&2; exit 1; }

mkdir -p "$DIR"
# A new attempt invalidates the published paths until it succeeds.
[ "$FORCE" = 0 ] || rm -f "$PATHS"

# --- 1. Debian's PyPy ------------------------------------------------------
missing=()
for package in pypy3 pypy3-dev pypy3-venv; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${missing[*]} by hand"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    say "apt-get install ${missing[*]}"
    {
        $sudo_cmd apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive timeout 300 $sudo_cmd apt-get install -y -qq "${missing[@]}"
    } > "$DIR/apt.log" 2>&1 || die "apt-get install ${missing[*]} (see $DIR/apt.log)"
fi
LIBPYPY=$(ls /usr/lib/*/libpypy3*-c.so 2>/dev/null | head -1)
[ -n "$LIBPYPY" ] || die "no /usr/lib/*/libpypy3*-c.so (Debian ships it in pypy3)"

# --- 2. uWSGI with the PyPy plugin ------------------------------------------
uwsgi_ok() {
    [ -x "$UWSGI" ] && [ "$("$UWSGI" --version 2>/dev/null)" = "$UWSGI_VERSION" ] &&
        "$UWSGI" --help 2>/dev/null | grep -qE '^ +--pypy-lib '
}
if [ "$FORCE" = 1 ] || ! uwsgi_ok; then
    rm -f "$PATHS"
    python=python3
    [ -x .venv/bin/python ] && python=.venv/bin/python  # has pip (scripts/bootstrap.sh)
    sdist="$DIR/uwsgi-$UWSGI_VERSION.tar.gz"
    if [ ! -f "$sdist" ]; then
        timeout 120 "$python" -m pip download -q --no-deps --no-binary :all: \
            "uwsgi==$UWSGI_VERSION" -d "$DIR" > "$DIR/download.log" 2>&1 ||
            die "pip download uwsgi==$UWSGI_VERSION (see $DIR/download.log)"
    fi
    rm -rf "$DIR/build"
    mkdir -p "$DIR/build"
    tar xzf "$sdist" -C "$DIR/build"
    say "building uWSGI $UWSGI_VERSION with the pypy profile"
    (cd "$DIR/build/uwsgi-$UWSGI_VERSION" &&
        UWSGI_BIN_NAME="$UWSGI" timeout 300 python3 uwsgiconfig.py --build pypy) \
        > "$DIR/build.log" 2>&1 || die "uWSGI build (see $DIR/build.log)"
    rm -rf "$DIR/build"
    uwsgi_ok || die "$UWSGI is not uWSGI $UWSGI_VERSION with --pypy-lib (see $DIR/build.log)"
fi

# --- 3. The PyPy venv ---------------------------------------------------------
# setup.cfg's install_requires, minus gevent and uWSGI (see above).
requirements=$(pypy3 - <<'EOF'
import configparser
config = configparser.ConfigParser()
config.read("setup.cfg")
for line in config["options"]["install_requires"].splitlines():
    name = line.strip()
    if name and not name.lower().startswith(("gevent", "uwsgi")):
        print(name)
EOF
)
wanted="$(echo $requirements) websockets==$WEBSOCKETS_PIN"
stamp="$VENV/.flask-websocket-requirements"
if [ "$FORCE" = 1 ] || [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    rm -f "$PATHS"
    rm -rf "$VENV"
    say "creating $VENV: $wanted, and this repository"
    timeout 120 pypy3 -m venv "$VENV" > "$DIR/venv.log" 2>&1 || die "pypy3 -m venv (see $DIR/venv.log)"
    # shellcheck disable=SC2086 # one requirement per word
    timeout 300 "$VENV/bin/python" -m pip install -q $wanted >> "$DIR/venv.log" 2>&1 ||
        die "pip install into the PyPy venv (see $DIR/venv.log)"
    # Editable, without dependencies: setup.cfg's python_requires is checked.
    timeout 300 "$VENV/bin/python" -m pip install -q --no-deps -e "$REPO" >> "$DIR/venv.log" 2>&1 ||
        die "pip install -e $REPO into the PyPy venv (see $DIR/venv.log)"
    echo "$wanted" > "$stamp"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# --- 4. Smoke start -----------------------------------------------------------
if [ ! -f "$PATHS" ]; then
    # The master evaluates --pypy-eval before forking; os._exit ends it there,
    # with 1 when the import fails (uWSGI would go on serving with no app).
    SMOKE='import os, traceback
try:
    import flask, websockets, flask_websocket
except BaseException:
    traceback.print_exc()
    os._exit(1)
print("smoke: flask_websocket", flask_websocket.__version__, "websockets", websockets.__version__, flush=True)
os._exit(0)'
    # Should it hang all the same: --die-on-term
    # makes timeout's SIGTERM end it (a uWSGI 2.0 master reloads on SIGTERM)
    # and -k kills it if even that does not.
    (cd "$DIR" && timeout -k 10 120 "$UWSGI" --http-socket 127.0.0.1:0 --master --die-on-term \
        --pypy-lib "$LIBPYPY" --pypy-home /usr --pypy-pp "$SITE" --pypy-pp "$REPO" \
        --pypy-eval "$SMOKE") \
        > "$DIR/smoke.log" 2>&1 && grep -q '^smoke: flask_websocket' "$DIR/smoke.log" ||
        die "the PyPy uWSGI cannot import flask_websocket (see $DIR/smoke.log)"
    say "$(grep '^smoke:' "$DIR/smoke.log")"
    printf 'uwsgi=%s\nlibpypy=%s\nhome=/usr\nsite_packages=%s\n' "$UWSGI" "$LIBPYPY" "$SITE" > "$PATHS"
fi
say "ready in $(($(date +%s) - START)) s: $UWSGI ($("$UWSGI" --version)), PyPy venv $VENV"

#!/usr/bin/env bash
# Install Autobahn|Testsuite (`wstest`) into a Python 2.7 virtualenv.
#
# wstest only runs on Python 2.7, so it gets its own virtualenv, by default
# `.venv-autobahn/` in the repository root (override with AUTOBAHN_VENV).
# Pins live in scripts/autobahn-requirements.txt.
#
# Python 2.7 is looked up, in order: $AUTOBAHN_PYTHON, the newest 2.7.x under
# `pyenv root` (or $PYENV_ROOT, ~/.pyenv), then `python2.7` on PATH.
#
# Idempotent: when the virtualenv's wstest already works (and the pins have
# not changed since it was installed) this exits at once without touching
# anything. Pass --force to rebuild the virtualenv from scratch.
#
# Usage: scripts/install-autobahn.sh [--force]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
REQUIREMENTS="$SCRIPT_DIR/autobahn-requirements.txt"
VENV=${AUTOBAHN_VENV:-$REPO_ROOT/.venv-autobahn}
STAMP="$VENV/.autobahn-requirements.sha256"

# virtualenv 20.15.1 is the last one that still creates Python 2.7
# environments; it is bootstrapped with Python 2.7's own pip into a temporary
# directory, with its Python 2 dependencies pinned as well.
VIRTUALENV_BOOTSTRAP=(
    virtualenv==20.15.1
    configparser==4.0.2
    contextlib2==0.6.0.post1
    distlib==0.3.9
    filelock==3.2.1
    importlib-metadata==2.1.3
    importlib-resources==3.3.1
    pathlib2==2.3.7.post1
    platformdirs==2.0.2
    scandir==1.10.0
    singledispatch==3.7.0
    six==1.17.0
    typing==3.10.0.0
    zipp==1.2.0
)

FORCE=0
case "${1:-}" in
    "") ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-autobahn: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

log() { echo "install-autobahn: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$REQUIREMENTS" ] || die "missing $REQUIREMENTS"
want_hash=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)

wstest_works() {
    [ -x "$VENV/bin/wstest" ] && "$VENV/bin/wstest" -a >/dev/null 2>&1
}

# Fast path: nothing to do.
if [ "$FORCE" = 0 ] && wstest_works; then
    have_hash=$(cat "$STAMP" 2>/dev/null || true)
    if [ -z "$have_hash" ] || [ "$have_hash" = "$want_hash" ]; then
        log "wstest already installed in $VENV"
        exit 0
    fi
    log "pins changed since the last install; updating $VENV"
fi

is_python27() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1
}

find_python27() {
    local candidate root roots=()
    if command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null); then
        roots+=("$root")
    fi
    # pyenv's default root, for shells where pyenv itself is not on PATH.
    roots+=("${PYENV_ROOT:-$HOME/.pyenv}")
    for root in "${roots[@]}"; do
        [ -d "$root/versions" ] || continue
        # Newest 2.7.x first.
        while IFS= read -r candidate; do
            is_python27 "$candidate" && { echo "$candidate"; return 0; }
        done < <(ls -d "$root"/versions/2.7*/bin/python2.7 2>/dev/null | sort -rV)
    done
    # Note: with pyenv, `python2.7` on PATH may be a shim that fails unless
    # 2.7 is selected; is_python27 weeds that out.
    if candidate=$(command -v python2.7 2>/dev/null) && is_python27 "$candidate"; then
        echo "$candidate"
        return 0
    fi
    return 1
}

if [ -n "${AUTOBAHN_PYTHON:-}" ]; then
    is_python27 "$AUTOBAHN_PYTHON" || die "AUTOBAHN_PYTHON=$AUTOBAHN_PYTHON is not a working Python 2.7"
    PY27=$AUTOBAHN_PYTHON
else
    PY27=$(find_python27) || die "Python 2.7 not found (Autobahn|Testsuite needs it).
  Install it, e.g. 'pyenv install 2.7.18' or your distribution's python2.7 package,
  or point AUTOBAHN_PYTHON at a python2.7 executable."
fi
log "using $PY27 ($("$PY27" -V 2>&1))"

start=$(date +%s)

if [ "$FORCE" = 1 ] || ! { [ -x "$VENV/bin/python" ] && is_python27 "$VENV/bin/python"; }; then
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/install-autobahn.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    log "bootstrapping virtualenv ${VIRTUALENV_BOOTSTRAP[0]#virtualenv==}"
    PYTHONWARNINGS=ignore "$PY27" -m pip install --quiet --disable-pip-version-check --no-input \
        --target "$tmp/virtualenv" "${VIRTUALENV_BOOTSTRAP[@]}"
    log "creating $VENV"
    PYTHONPATH="$tmp/virtualenv" "$PY27" -m virtualenv --quiet --clear \
        --no-periodic-update --no-download --app-data "$tmp/app-data" \
        -p "$PY27" "$VENV"
fi

log "installing pinned packages from ${REQUIREMENTS#"$REPO_ROOT"/}"
# PYTHONWARNINGS silences pip's Python 2.7 end-of-life notice.
PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install --quiet \
    --disable-pip-version-check --no-input --progress-bar off \
    --only-binary cryptography -r "$REQUIREMENTS"

wstest_works || die "wstest was installed but '$VENV/bin/wstest -a' fails"
echo "$want_hash" > "$STAMP"
log "done in $(( $(date +%s) - start ))s: $("$VENV/bin/wstest" -a 2>&1 | tr '\n' ' ')"

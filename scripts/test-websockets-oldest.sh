#!/usr/bin/env bash
# The protocol and connection tests on the OLDEST websockets setup.cfg allows.
#
# The main venv (.venv, scripts/bootstrap.sh) has the newest websockets of
# setup.cfg's range; this script keeps a second small venv,
# .venv-websockets-oldest (git-ignored), with the range's lower bound and
# runs the tests that depend on websockets' internals there
# (flask_websocket/_websockets_internals.py says which). scripts/test.sh
# calls it; it fails when they fail.
#
#   scripts/test-websockets-oldest.sh
#
# The venv holds setup.cfg's install_requires with websockets pinned to its
# ">=" bound, minus uWSGI (these tests run in-process, without a server),
# plus pytest, pytest-timeout and psutil (tests/conftest.py imports it).
# Built in about 20 s; rebuilt only when that list changes (a stamp).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-websockets-oldest
PYTHON=.venv/bin/python  # the main venv's interpreter (scripts/bootstrap.sh)
TESTS=(tests/test_websockets_internals.py tests/test_protocol.py tests/test_compression.py tests/test_connection.py tests/test_sendqueue.py)

say() { echo "test-websockets-oldest: $*"; }

wanted=$("$PYTHON" - <<'PY'
import configparser
import re

config = configparser.ConfigParser()
config.read("setup.cfg")
floor = None
for line in config["options"]["install_requires"].splitlines():
    requirement = line.strip()
    if not requirement or requirement.lower().startswith("uwsgi"):
        continue
    if requirement.lower().startswith("websockets"):
        match = re.search(r">=\s*([0-9][^,\s]*)", requirement)
        if match is None:
            raise SystemExit(f"setup.cfg: no lower bound in {requirement!r}")
        floor = match.group(1)
        requirement = f"websockets=={floor}"
    print(requirement)
if floor is None:
    raise SystemExit("setup.cfg: websockets is not in install_requires")
for line in config["options.extras_require"]["test"].splitlines():
    requirement = line.strip()
    if requirement.lower().startswith(("pytest", "psutil")):
        print(requirement)
PY
)
wanted=$(echo $wanted)  # one line, one space between requirements
floor=$(echo "$wanted" | tr ' ' '\n' | sed -n 's/^websockets==//p')

stamp="$VENV/.flask-websocket-requirements"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    say "creating $VENV: $wanted"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # shellcheck disable=SC2086 # one requirement per word
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check $wanted
    echo "$wanted" > "$stamp"
fi

installed=$("$VENV/bin/python" -c 'from websockets.version import version; print(version)')
if [ "$installed" != "$floor" ]; then
    say "FAILED: $VENV has websockets $installed, not $floor" >&2
    exit 1
fi
say "websockets $installed: ${TESTS[*]}"
PYTHONPATH="$PWD" "$VENV/bin/python" -m pytest -p no:cacheprovider -q -rfEs "${TESTS[@]}"

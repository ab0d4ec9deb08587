#!/usr/bin/env bash
# Run every test (installs what it needs first): lint, types, the docs build,
# the protocol and connection tests on the oldest websockets setup.cfg
# allows, then unit tests, real-uWSGI tests and the Autobahn|Testsuite
# conformance run (on the newest).
#   scripts/test.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/install-autobahn.sh
scripts/install-pypy-uwsgi.sh  # PyPy + uWSGI's PyPy plugin: the "continulets" model

echo "== ruff"
.venv/bin/ruff check flask_websocket tests examples benchmarks docs
echo "== mypy --strict"
.venv/bin/mypy
echo "== docs (Sphinx, offline, warnings are errors)"
scripts/docs.sh
echo "== pytest, oldest websockets of setup.cfg's range"
scripts/test-websockets-oldest.sh
echo "== pytest"
set +e
.venv/bin/python -m pytest -p no:cacheprovider -rfEs "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"

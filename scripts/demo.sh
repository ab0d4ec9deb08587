#!/usr/bin/env bash
# Run the example app on uWSGI (installs what it needs first).
#   scripts/demo.sh [--port 8080] [other `flask websocket run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/flask --app examples.echo websocket run "$@"

#!/usr/bin/env bash
# Run the chat example on uWSGI (installs what it needs first); open
# http://127.0.0.1:8080/. The echo example: flask --app examples.echo websocket run
#   scripts/demo.sh [--port 8080] [other `flask websocket run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/flask --app examples.chat websocket run "$@"

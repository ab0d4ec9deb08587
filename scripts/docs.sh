#!/usr/bin/env bash
# Build the documentation site into docs/_build/html (gitignored), offline,
# with every warning an error:
#   scripts/docs.sh [sphinx-build options]
# Sets the machine up first (scripts/bootstrap.sh) when Sphinx is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import sphinx, furo, myst_parser" >/dev/null 2>&1; then
    scripts/bootstrap.sh
fi
out=docs/_build/html
.venv/bin/python -m sphinx -W --keep-going -n -q -b html docs "$out" "$@"
echo "docs: $out/index.html"

#!/usr/bin/env bash
# Runs the whole test suite from scratch: makes .venv if needed, installs the package with
# its dev extra, then lints and tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev]'
ruff check .
python -m pytest -q "$@"

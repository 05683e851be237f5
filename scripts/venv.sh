# Sourced by the other scripts: make .venv if needed, activate it, install the package.
# Usage: . scripts/venv.sh [EXTRA]   (EXTRA: e.g. "[dev]")
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".${1:-}"

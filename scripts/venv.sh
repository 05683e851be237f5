# Sourced by the other scripts: make .venv if needed, activate it, install the package.
# Usage: . scripts/venv.sh [EXTRA]   (EXTRA: e.g. "[dev]")
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# strict: a link tree on a plain .pth path entry; the default editable finder is imported by
# every interpreter start (about 11 ms), which every child process and one_shot task pays
# (strict: a module added to the source needs this script run again)
python -m pip install -q -e ".${1:-}" --config-settings editable_mode=strict

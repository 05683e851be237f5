#!/usr/bin/env bash
# The two-minute tour: makes .venv if needed, installs the package, then runs
# `rundown-agent demo` (local Redis, control server, agent, tasks, results, clean stop).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
exec rundown-agent demo "$@"

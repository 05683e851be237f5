#!/usr/bin/env bash
# Runs the whole test suite from scratch: makes .venv if needed, installs the package with
# its dev extra, then lints and tests. Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/venv.sh" "[dev]"
ruff check .
python -m pytest -q "$@"

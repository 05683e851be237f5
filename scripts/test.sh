#!/usr/bin/env bash
# Runs the whole test suite from scratch: makes .venv if needed, installs the package with
# its dev extra, then lints and tests. Extra arguments go to pytest, after ours (so they win):
#   scripts/test.sh tests/test_broker.py -n 0     one file, in this process
# Tests run in TEST_WORKERS pytest-xdist workers (default 4: most tests wait on processes and
# Redis, not on the CPU), each with its own redis-server and range of ports; the groups of
# tests/scheduling.py run one test at a time. A line per test file reports progress.
set -euo pipefail
. "$(dirname "$0")/venv.sh" "[dev]"
ruff check .
python -m pytest -q -n "${TEST_WORKERS:-4}" --dist loadgroup "$@"

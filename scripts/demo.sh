#!/usr/bin/env bash
# The two-minute tour: makes .venv if needed, installs the package, then runs
# `rundown-agent demo` (local Redis, control server, agent, tasks, results, clean stop).
set -euo pipefail
. "$(dirname "$0")/venv.sh"
exec rundown-agent demo "$@"

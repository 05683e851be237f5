#!/usr/bin/env bash
# The tour: makes .venv if needed, installs the package, then runs `rundown-agent demo`
# (local Redis, control server, agent, tasks, results, clean stop). Options go to the demo:
# --dir DIR (its kept directory), --fresh (start from an empty one).
set -euo pipefail
. "$(dirname "$0")/venv.sh"
exec rundown-agent demo "$@"

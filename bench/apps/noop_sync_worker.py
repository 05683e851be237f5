"""Benchmark task code with plain (sync) handlers, the README's style: a no-op handler that
returns a small dict. ``--once`` serves one task and exits (the agent's one_shot mode).
"""

import sys

from task_sdk import run, run_once, task


@task("noop")
def noop(payload):
    return {"ok": True}


@task("size")
def size(payload):
    return {"bytes": len(payload.get("blob", "")) if isinstance(payload, dict) else len(payload)}


if __name__ == "__main__":
    run_once() if "--once" in sys.argv[1:] else run()

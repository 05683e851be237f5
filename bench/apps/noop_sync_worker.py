"""Benchmark task code with plain (sync) handlers, the README's style: a no-op handler that
returns a small dict, and ``sleep10ms``, a handler that blocks for 10 ms (the realistic
section). ``--once`` serves one task and exits (the agent's one_shot mode).
"""

import sys
import time

from task_sdk import run, run_once, task


@task("noop")
def noop(payload):
    return {"ok": True}


@task("sleep10ms")
def sleep10ms(payload):
    time.sleep(0.01)
    return {"ok": True}


@task("size")
def size(payload):
    return {"bytes": len(payload.get("blob", "")) if isinstance(payload, dict) else len(payload)}


if __name__ == "__main__":
    run_once() if "--once" in sys.argv[1:] else run()

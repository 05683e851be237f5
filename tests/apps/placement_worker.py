"""Task code for the progress, GPU placement and label tests (run by real agents)."""

import os
import sys
import time

from task_sdk import current_task, run, run_once, task


@task("steps")
def steps(payload):
    """Reports progress ``n`` times, ``pause`` seconds apart; each message carries the time
    it was reported, so a test can measure how soon it became visible."""
    n = int(payload.get("n", 10))
    for i in range(1, n + 1):
        current_task().progress(i / n, f"step {i} of {n} at {time.time():.6f}")
        time.sleep(float(payload.get("pause", 0.2)))
    return {"steps": n}


@task("tight")
def tight(payload):
    """A tight loop of progress calls: what each costs, in CPU time."""
    n = int(payload.get("n", 100_000))
    ctx = current_task()
    cpu = time.process_time()
    wall = time.perf_counter()
    for i in range(n):
        ctx.progress(i / n, "busy")
    return {"calls": n, "cpu_per_call": (time.process_time() - cpu) / n,
            "seconds": time.perf_counter() - wall}


@task("quick_finish")
def quick_finish(payload):
    """Reports twice in a row and returns: the second report is still held by the child's
    coalescing when the handler returns."""
    ctx = current_task()
    ctx.progress(0.5, "half")
    ctx.progress(1.0, "done")
    return {"ok": True}


@task("bad_progress")
def bad_progress(payload):
    current_task().progress(payload.get("fraction"))
    return "unreachable"


@task("foreign_progress")
def foreign_progress(payload):
    """Reports progress for another task than its own (which the agent must ignore)."""
    from task_sdk.progress import report

    for _ in range(5):
        report(payload["other"], 0.5, "not mine")
        time.sleep(0.06)
    time.sleep(0.3)
    return {"ok": True}


@task("where")
def where(payload):
    time.sleep(float(payload.get("seconds", 0)))
    return {"pid": os.getpid(), "agent": os.environ.get("AGENT_NAME"),
            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}


if __name__ == "__main__":
    run_once() if "--once" in sys.argv else run()

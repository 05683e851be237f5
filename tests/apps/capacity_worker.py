"""Task code for the capacity end-to-end tests (run by a real agent in real child processes).

Handlers that take time append JSON lines to the file named by ``RECORD_FILE`` (when set):
``{"ev": "start" | "tick" | "end", "run": <one id per run>, "id": <task id>, "pid": ..., "t": ...}``,
a tick every ``TICK`` seconds while they sleep, so a test can tell when each run started, when
it ended, and how long a run that was killed was still alive (its last tick).
"""

import asyncio
import os
import subprocess
import sys
import time
import uuid

from task_sdk import current_task, load, run, task

TICK = 0.1
MB = 1024 * 1024
PAGE = 4096


def _record(event, run_id, **fields):
    path = os.environ.get("RECORD_FILE")
    if not path:
        return
    import json

    line = json.dumps({"ev": event, "run": run_id, "id": current_task().id, "pid": os.getpid(),
                       "t": time.time(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write of a short line: appends do not interleave
    finally:
        os.close(fd)


def _seconds(payload, default):
    if isinstance(payload, int | float):
        return float(payload)
    if isinstance(payload, dict):
        return float(payload.get("seconds", default))
    return default


def _sleep_ticking(run_id, seconds):
    end = time.time() + seconds
    while True:
        left = end - time.time()
        if left <= 0:
            return
        time.sleep(min(TICK, left))
        _record("tick", run_id)


@load
def warm_up():
    time.sleep(float(os.environ.get("LOAD_SECONDS", "0")))


@task("sleep")
def sleep(payload):
    """Sleep ``payload`` seconds (a number, or ``{"seconds": n}``); answer with the run's times."""
    run_id = uuid.uuid4().hex
    start = time.time()
    _record("start", run_id)
    _sleep_ticking(run_id, _seconds(payload, 0.1))
    end = time.time()
    _record("end", run_id)
    return {"start": start, "end": end, "pid": os.getpid(), "run": run_id}


@task("hang")
def hang(payload):
    """Never return (SIGTERM is not ignored)."""
    run_id = uuid.uuid4().hex
    _record("start", run_id)
    while True:
        _sleep_ticking(run_id, 3600)


@task("quick")
def quick(payload):
    run_id = uuid.uuid4().hex
    _record("start", run_id)
    _record("end", run_id)
    return {"pid": os.getpid(), "t": time.time()}


@task("grow")
def grow(payload):
    """Allocate memory in steps of ~50 MB up to ``{"mb": n}`` (or a number), touching every
    page, one step every ``step_seconds``; then sleep ``sleep`` seconds. Each step is recorded
    (``{"ev": "grow", "mb": ...}``) once its pages are touched."""
    payload = payload if isinstance(payload, dict) else {"mb": payload}
    target = int(payload.get("mb", 100))
    step_seconds = float(payload.get("step_seconds", 0.25))
    run_id = uuid.uuid4().hex
    _record("start", run_id)
    blocks = []
    allocated = 0
    while allocated < target:
        size = min(50, target - allocated)
        block = bytearray(size * MB)
        for offset in range(0, len(block), PAGE):
            block[offset] = 1
        blocks.append(block)
        allocated += size
        _record("grow", run_id, mb=allocated)
        time.sleep(step_seconds)
    _sleep_ticking(run_id, float(payload.get("sleep", 60)))
    _record("end", run_id)
    return {"mb": allocated, "pid": os.getpid()}


GRANDCHILD = "import os, time; os.setsid(); time.sleep(300)"


@task("spawn_setsid")
def spawn_setsid(payload):
    """Start a grandchild that leaves our session (``os.setsid()``) and sleeps 300 s; write its
    pid to ``payload["pid_file"]``; then sleep ``payload["seconds"]`` (default 300)."""
    run_id = uuid.uuid4().hex
    _record("start", run_id)
    grandchild = subprocess.Popen([sys.executable, "-c", GRANDCHILD], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = payload["pid_file"] + ".tmp"
    with open(tmp, "w") as out:
        out.write(str(grandchild.pid))
    os.replace(tmp, payload["pid_file"])
    _sleep_ticking(run_id, float(payload.get("seconds", 300)))
    _record("end", run_id)
    return {"grandchild": grandchild.pid}


@task("async_sleep")
async def async_sleep(payload):
    run_id = uuid.uuid4().hex
    start = time.time()
    _record("start", run_id)
    await asyncio.sleep(_seconds(payload, 0.1))
    end = time.time()
    _record("end", run_id)
    return {"start": start, "end": end, "pid": os.getpid(), "run": run_id}


if __name__ == "__main__":
    run()

"""Task code for the end-to-end tests (run by a real agent in a real child process)."""

import os
import sys
import time

from task_sdk import RetryAfter, current_task, run, run_once, task


@task("stamp")
def stamp(payload):
    info = current_task()
    return {"t": time.time_ns(), "queue": info.queue, "id": info.id, "n": payload.get("n")}


@task("sleep")
def sleep(payload):
    started = time.time()
    time.sleep(float(payload.get("seconds", 0.1)))
    return {"slept": payload.get("seconds", 0.1), "pid": os.getpid(), "start": started,
            "end": time.time()}


@task("retry_fast")
def retry_fast(payload):
    raise RetryAfter(1, f"attempt {current_task().retry_count + 1} failed: {payload.get('why', 'boom')}")


@task("record")
def record(payload):
    # Each run appends the task ID, so tests can count runs (duplicates included).
    with open(os.environ["RECORD_FILE"], "a") as out:
        out.write(current_task().id + "\n")
    time.sleep(float(payload.get("seconds", 0)))
    return {"ok": True}


if __name__ == "__main__":
    run_once() if "--once" in sys.argv else run()

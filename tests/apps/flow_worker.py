"""Task code for the flow-control end-to-end tests (run by real agents in real children).

Every handler appends a JSON line to ``RECORD_FILE`` at its start and end:
``{"ev": "start" | "end", "id": <task id>, "key": <payload's key>, "pid": ..., "t": <unix s>}``.
"""

import json
import os
import time

from task_sdk import current_task, run, task


def _record(event, payload):
    line = json.dumps({"ev": event, "id": current_task().id, "key": (payload or {}).get("key", ""),
                       "pid": os.getpid(), "t": time.time()}) + "\n"
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one short write: appends do not interleave
    finally:
        os.close(fd)


@task("noop")
def noop(payload):
    _record("start", payload)
    return {}


@task("sleep")
def sleep(payload):
    _record("start", payload)
    time.sleep(float(payload.get("seconds", 0.1)))
    _record("end", payload)
    return {}


if __name__ == "__main__":
    run()

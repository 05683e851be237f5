"""Task code for the chaos suite, run by real agents in real child processes.

Every run of ``work`` appends ``<task id> <agent pid> <unix time>`` to $RECORD_FILE before it
does anything else, so the suite can count runs (duplicates included) and tell which agent ran
each one. ``crash`` ends its child the way the payload says.
"""

import os
import resource
import signal
import time

from task_sdk import current_task, run, task

AGENT = os.environ.get("AGENT_NAME", "?")
AGENT_PID = os.getppid()  # taken at start-up: after a SIGKILL of the agent, getppid() is 1
# A memory limit for this child, so a huge allocation fails here instead of the machine.
_LIMIT = int(os.environ.get("CHILD_MEMORY_LIMIT", 0))
if _LIMIT:
    resource.setrlimit(resource.RLIMIT_AS, (_LIMIT, _LIMIT))


def _record(tag: str = "") -> None:
    line = f"{current_task().id} {AGENT_PID} {time.time():.3f}{tag}\n"
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


@task("work")
def work(payload):
    _record()
    info = current_task()
    seconds = payload.get("retry_seconds" if info.retry_count else "seconds", 0)
    time.sleep(float(seconds or 0))
    return {"agent": AGENT, "agent_pid": AGENT_PID, "retry_count": info.retry_count}


@task("crash")
def crash(payload):
    _record(" crash")
    how = payload.get("how")
    if how == "exit":
        os._exit(3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "alloc":
        blob = bytearray(int(payload.get("bytes", 8 << 30)))  # over the RLIMIT_AS above
        return {"allocated": len(blob)}
    raise ValueError(f"unknown crash {how!r}")


if __name__ == "__main__":
    run()

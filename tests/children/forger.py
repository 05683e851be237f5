"""A task_sdk child whose handlers write forged answer lines, in every way a process can.

Before task_sdk is imported it keeps what a library or helper could hold on to: a duplicate
of the original stdout (``EARLY_STDOUT``) and a helper process (``cat``) whose stdout is the
original stdout. ``forge`` writes a forged success answer (``"result": null``) for a task id,
its own unless the payload names a ``target``, waits for the agent to read it, and then
returns its real result; ``write`` writes any bytes the same ways.
"""

import base64
import json
import os
import subprocess
import sys
import time

EARLY_STDOUT = os.dup(1)
HELPER = subprocess.Popen(["cat"], stdin=subprocess.PIPE)

from task_sdk import current_task, run, task  # noqa: E402

SETTLE = 0.2  # seconds for the agent to read the forged line before the real answer


def forged_line(task_id: str) -> str:
    return json.dumps({"task_id": task_id, "result": None, "error": None, "retry": False})


def forge(way: str, line: str) -> None:
    if way == "subprocess_echo":
        subprocess.run(["echo", line], check=True)
    else:
        write(way, (line + "\n").encode())


def write(way: str, data: bytes) -> None:
    if way == "print":
        print(data.decode("utf-8", errors="replace"), end="", flush=True)
    elif way == "stdout_write":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    elif way == "fd1":
        os.write(1, data)
    elif way == "subprocess_echo":
        subprocess.run(["cat"], input=data, check=True)
    elif way == "early_stdout":
        os.write(EARLY_STDOUT, data)
    elif way == "helper_process":
        HELPER.stdin.write(data)
        HELPER.stdin.flush()
    else:
        raise ValueError(f"unknown way {way!r}")


@task("forge")
def forge_answer(payload):
    target = payload.get("target") or current_task().id
    forge(payload["way"], forged_line(target))
    time.sleep(SETTLE)
    return {"real": True, "way": payload["way"]}


@task("write")
def write_bytes(payload):
    """Write ``data`` (base64; ``%OWN%`` becomes this task's id) the given way, then answer."""
    data = base64.b64decode(payload["data"]).replace(b"%OWN%", current_task().id.encode())
    write(payload["way"], data)
    time.sleep(payload.get("settle", 0))
    return {"real": True}


@task("slow")
def slow(payload):
    time.sleep(payload["seconds"])
    return {"slow": True}


@task("inheritance")
def inheritance(payload):
    """What a process started by a handler inherits, even with close_fds=False."""
    probe = "import os, json; print(json.dumps(sorted(int(f) for f in os.listdir('/proc/self/fd'))))"
    out = subprocess.run([sys.executable, "-c", probe], close_fds=False, check=True,
                         capture_output=True, text=True).stdout
    return {"fds": json.loads(out), "variable": os.environ.get("RUNDOWN_PROTOCOL_FDS")}


if __name__ == "__main__":
    run()

"""One_shot fork-server test code: tasks that report where and how they run.

Knobs (environment): ZYGOTE_APP_THREAD=1 starts a thread at import (forking is then unsafe),
ZYGOTE_APP_LOAD_THREAD=1 starts one in @load.
"""

import os
import threading
import time

from task_sdk import load, run_once, task

IMPORTED_IN = os.getpid()

if os.environ.get("ZYGOTE_APP_THREAD"):
    threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="import-thread").start()


@load
def setup():
    if os.environ.get("ZYGOTE_APP_LOAD_THREAD"):
        threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="load-thread").start()
    return {"loaded_in": os.getpid()}


def _environ_mark() -> str | None:
    with open("/proc/self/environ", "rb") as f:
        for item in f.read().split(b"\0"):
            if item.startswith(b"RUNDOWN_CHILD_MARK="):
                return item.split(b"=", 1)[1].decode()
    return None


@task("whoami")
def whoami(payload, ctx):
    return {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
            "imported_in": IMPORTED_IN, "loaded_in": ctx["loaded_in"],
            "environ_mark": _environ_mark(), "env_mark": os.environ.get("RUNDOWN_CHILD_MARK")}


@task("inherited_fds")
def inherited_fds(payload):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import os; print(os.listdir('/proc/self/fd'))"],
                         capture_output=True, text=True, check=True, close_fds=False).stdout
    return sorted(int(fd) for fd in eval(out))  # noqa: S307 - our own child's list of digits


@task("hang")
def hang(payload):
    time.sleep(3600)


if __name__ == "__main__":
    run_once()

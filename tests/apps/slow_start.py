"""A task app whose @load takes a while, so the agent is observably "starting"."""

import os
import time

from task_sdk import load, run, task


@load
def warm_up():
    time.sleep(float(os.environ.get("LOAD_SECONDS", "2")))


@task
def work(payload):
    time.sleep(float(payload.get("seconds", 0)))
    return {"ok": True}


if __name__ == "__main__":
    run()

"""Task code for the group aggregation tests: handlers for aggregated tasks and @aggregate
functions. ``slow`` groups: the first aggregation (no marker file AGG_MARKER yet) writes the
marker and hangs, so the agent can be killed in the middle of it; later ones are quick."""

import os
import time

from task_sdk import aggregate, run, task


@task("notify:aggregated")
def joined(payload):
    return {"count": len(payload), "items": payload}


@task("notify:digest")
def digest(payload):
    return payload


@aggregate("notify", into="notify:digest")
def digest_of(group, payloads):
    return {"group": group, "lines": [p["text"] for p in payloads], "pid": os.getpid()}


@aggregate("slow", into="notify:digest")
async def slow_digest(group, payloads):
    marker = os.environ["AGG_MARKER"]
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(300)
    return {"group": group, "lines": [p["text"] for p in payloads], "pid": os.getpid()}


@task
def anything(payload):
    return {"default": payload}


if __name__ == "__main__":
    run()

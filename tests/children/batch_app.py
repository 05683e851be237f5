"""A deployed-code stand-in with batched handlers (task_sdk/batching.py).

``embed``: sync, batch 32, max_wait 10 ms (``embed_full``: max_wait 5 s, ``embed_wait``: 0.3 s); each payload {"n": int} gives {"n", "size"} (the
size of the batch it ran in); "fail": true returns an ItemError for that item, "skip": true a
SkipRetry, "crash": true kills the child with os._exit (after BATCH_LOG, if set, records the
batch's ids); with HANG_ONCE (a path) set, the first batch writes it and hangs. ``aembed``: the same, async. ``slow``: sleeps payload["sleep"] seconds.
Knob: CHILD_THREADS_ASYNC=1 adds an async handler so the child runs the asyncio server.
"""

import asyncio
import json
import os
import time

from task_sdk import ItemError, SkipRetry, load, run, task


@load
def setup():
    return {"model": "tiny"}


def _answer(payloads, ctx):
    log = os.environ.get("BATCH_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps([p.get("n") for p in payloads]) + "\n")
    if any(p.get("crash") for p in payloads):
        os._exit(7)
    marker = os.environ.get("HANG_ONCE")  # the first batch hangs (its agent is killed meanwhile)
    if marker and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(300)
    out = []
    for p in payloads:
        if p.get("fail"):
            out.append(ItemError(f"item {p['n']} is bad"))
        elif p.get("skip"):
            out.append(SkipRetry(f"item {p['n']} skipped"))
        elif p.get("raise"):
            raise ValueError("the whole batch failed")
        else:
            out.append({"n": p.get("n"), "size": len(payloads), "model": ctx["model"]})
    return out


@task("embed", batch=32, max_wait=0.01)
def embed(payloads, ctx):
    return _answer(payloads, ctx)


@task("embed_full", batch=32, max_wait=5.0)
def embed_full(payloads, ctx):
    """``embed`` that waits up to 5 s for 32 tasks: a full batch whatever the machine's load."""
    return _answer(payloads, ctx)


@task("embed_wait", batch=32, max_wait=0.3)
def embed_wait(payloads, ctx):
    return _answer(payloads, ctx)


@task("aembed", batch=8, max_wait=0.01)
async def aembed(payloads, ctx):
    await asyncio.sleep(0.01)
    return _answer(payloads, ctx)


@task("slow", batch=4, max_wait=0.0)
def slow(payloads):
    time.sleep(max(p.get("sleep", 0) for p in payloads))
    return [{"n": p.get("n")} for p in payloads]


@task("wrong", batch=4, max_wait=0.0)
def wrong(payloads):
    return payloads[:-1]


@task("single")
def single(payload):
    return {"single": payload}


if __name__ == "__main__":
    run()

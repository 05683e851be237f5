"""A child module with sync and async handlers (issue 20, item 1): where each one runs."""

import asyncio
import contextvars
import threading
import time

from task_sdk import current_task, run, task


@task("where")
def where(payload):
    pool = [t.name for t in threading.enumerate() if t.name.startswith("task_sdk-handler")]
    return {"thread": threading.current_thread().name, "handler_threads": pool}


@task("where_async")
async def where_async(payload):
    await asyncio.sleep(float(payload.get("sleep", 0)))
    return {"thread": threading.current_thread().name, "loop": id(asyncio.get_running_loop()),
            "id": current_task().id, "ended": time.time()}


SEEN = contextvars.ContextVar("seen", default=None)


@task("inside_async")
async def inside_async(payload):
    """What an async handler sees when it ends without waiting (its first step is run by the
    SDK, not by a turn of the loop) or after waiting (``wait``); ``fail`` raises."""
    before = SEEN.get()
    loop = asyncio.get_running_loop()
    timers = len(loop._scheduled)  # before its own timeout's: what earlier tasks left
    SEEN.set(payload.get("mark"))  # must not leak into the next task
    async with asyncio.timeout(60):  # needs a current task
        if payload.get("wait"):
            await asyncio.sleep(0.01)
    if payload.get("fail"):
        raise ValueError(f"failed as asked: {payload['fail']}")
    return {"task": asyncio.current_task() is not None, "seen_before": before,
            "timers": timers, "ready": len(loop._ready)}


if __name__ == "__main__":
    run()

"""A child module with sync and async handlers (issue 20, item 1): where each one runs."""

import asyncio
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


if __name__ == "__main__":
    run()

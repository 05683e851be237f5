"""arq peer: the suite's tasks. Runs in bench/.venv-peers.

    python arq_noop.py enqueue N [FUNCTION]   # prints {"seconds": ...}; FUNCTION: noop (default),
                                              # sleep10ms, sleep50ms
    python arq_noop.py work                   # one worker process, asyncio

* ``noop`` returns a small dict;
* ``sleep10ms``: a sync handler that blocks for 10 ms (``time.sleep``). arq runs only
  coroutines; its documented way for blocking code is ``loop.run_in_executor``, here with a
  thread pool of ``max_jobs`` threads made at start-up (asyncio's default executor would have
  min(32, CPUs + 4) threads), so ``max_jobs`` handlers can block at once;
* ``sleep50ms``: an async handler that awaits 50 ms (``asyncio.sleep``).
"""

import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from arq import create_pool, run_worker
from arq.connections import RedisSettings

REDIS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])
MAX_JOBS = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "128"))


def blocking_10ms():
    time.sleep(0.01)
    return {"ok": True}


async def noop(ctx, n):
    return {"ok": True}


async def sleep10ms(ctx, n):
    return await asyncio.get_running_loop().run_in_executor(ctx["threads"], blocking_10ms)


async def sleep50ms(ctx, n):
    await asyncio.sleep(0.05)
    return {"ok": True}


async def startup(ctx):
    ctx["threads"] = ThreadPoolExecutor(max_workers=MAX_JOBS, thread_name_prefix="handler")


async def shutdown(ctx):
    ctx["threads"].shutdown(wait=False)


class WorkerSettings:
    functions = [noop, sleep10ms, sleep50ms]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = REDIS
    max_jobs = MAX_JOBS
    keep_result = 0  # like the agent's tasks (no retention): the result is not stored
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))
    handle_signals = True


async def enqueue(count: int, function: str) -> float:
    pool = await create_pool(REDIS)
    t0 = time.perf_counter()
    for lo in range(0, count, 100):
        await asyncio.gather(*(pool.enqueue_job(function, i) for i in range(lo, min(count, lo + 100))))
    seconds = time.perf_counter() - t0
    await pool.aclose()
    return seconds


if __name__ == "__main__":
    if sys.argv[1:2] == ["enqueue"]:
        function = (sys.argv[3:4] or ["noop"])[0]
        print(json.dumps({"seconds": asyncio.run(enqueue(int(sys.argv[2]), function))}))
    elif sys.argv[1:2] == ["work"]:
        run_worker(WorkerSettings)

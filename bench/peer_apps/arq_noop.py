"""arq peer: the same no-op task (returns a small dict). Runs in bench/.venv-peers.

    python arq_noop.py enqueue N    # prints {"seconds": ...}
    python arq_noop.py work         # one worker process, asyncio
"""

import asyncio
import json
import os
import sys
import time

from arq import create_pool, run_worker
from arq.connections import RedisSettings

REDIS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])


async def noop(ctx, n):
    return {"ok": True}


class WorkerSettings:
    functions = [noop]
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "128"))
    keep_result = 0  # like the agent's tasks (no retention): the result is not stored
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))
    handle_signals = True


async def enqueue(count: int) -> float:
    pool = await create_pool(REDIS)
    t0 = time.perf_counter()
    for lo in range(0, count, 100):
        await asyncio.gather(*(pool.enqueue_job("noop", i) for i in range(lo, min(count, lo + 100))))
    seconds = time.perf_counter() - t0
    await pool.aclose()
    return seconds


if __name__ == "__main__":
    if sys.argv[1:2] == ["enqueue"]:
        print(json.dumps({"seconds": asyncio.run(enqueue(int(sys.argv[2])))}))
    elif sys.argv[1:2] == ["work"]:
        run_worker(WorkerSettings)

"""Dramatiq peer: the suite's tasks. Runs in bench/.venv-peers.

    python dramatiq_noop.py enqueue N [ACTOR]   # prints {"seconds": ...}; ACTOR: noop (default),
                                                # sleep10ms, sleep50ms
    dramatiq dramatiq_noop --processes 2 --threads 8

* ``noop`` returns a small dict;
* ``sleep10ms``: a sync handler that blocks for 10 ms (``time.sleep``);
* ``sleep50ms``: an async handler that awaits 50 ms (``asyncio.sleep``). Dramatiq runs async
  actors on one event-loop thread per worker process (its AsyncIO middleware, added when
  ``BENCH_DRAMATIQ_ASYNCIO=1``); each worker thread waits for its coroutine, so processes x
  threads of them run at once.
"""

import asyncio
import json
import os
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
if os.environ.get("BENCH_DRAMATIQ_ASYNCIO") == "1":
    broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop(n):
    return {"ok": True}


@dramatiq.actor(max_retries=0)
def sleep10ms(n):
    time.sleep(0.01)
    return {"ok": True}


@dramatiq.actor(max_retries=0)
async def sleep50ms(n):
    await asyncio.sleep(0.05)
    return {"ok": True}


if __name__ == "__main__" and sys.argv[1:2] == ["enqueue"]:
    count = int(sys.argv[2])
    actor = {"noop": noop, "sleep10ms": sleep10ms, "sleep50ms": sleep50ms}[(sys.argv[3:4] or ["noop"])[0]]
    t0 = time.perf_counter()
    for i in range(count):
        actor.send(i)
    print(json.dumps({"seconds": time.perf_counter() - t0}))

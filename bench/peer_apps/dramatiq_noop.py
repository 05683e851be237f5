"""Dramatiq peer: the same no-op task (returns a small dict). Runs in bench/.venv-peers.

    python dramatiq_noop.py enqueue N     # prints {"seconds": ...}
    dramatiq dramatiq_noop --processes 2 --threads 8
"""

import json
import os
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop(n):
    return {"ok": True}


if __name__ == "__main__" and sys.argv[1:2] == ["enqueue"]:
    count = int(sys.argv[2])
    t0 = time.perf_counter()
    for i in range(count):
        noop.send(i)
    print(json.dumps({"seconds": time.perf_counter() - t0}))

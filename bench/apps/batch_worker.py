"""Benchmark task code for batched handlers: a model-like cost of 20 ms per call plus 1 ms
per item, as one batched handler (``embed``: up to 32 items, waiting at most 10 ms for a
batch to fill) and the same cost per task unbatched (``embed_one``: 21 ms). Each result says
when its handler started (``started``, Unix seconds) and how many items its call took.
"""

import time

from task_sdk import run, task

CALL_SECONDS = 0.020
ITEM_SECONDS = 0.001


@task("embed", batch=32, max_wait=0.01)
def embed(payloads):
    started = time.time()
    time.sleep(CALL_SECONDS + ITEM_SECONDS * len(payloads))
    return [{"started": started, "items": len(payloads)} for _ in payloads]


@task("embed_one")
def embed_one(payload):
    started = time.time()
    time.sleep(CALL_SECONDS + ITEM_SECONDS)
    return {"started": started, "items": 1}


if __name__ == "__main__":
    run()

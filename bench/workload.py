"""Producers: our client (single and batched enqueues), a bare producer that writes only the
asynq keys with plain redis-py commands, and parallel bulk loading for large N."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import redis

from agent.broker import keys
from agent.broker.messages import TaskMessage
from agent.client import Client

SMALL = "small"  # payload {"n": i}
BIG_BYTES = 100_000


def payload_for(kind: str, i: int):
    if kind == SMALL:
        return {"n": i}
    # ~100 KB of JSON: a dict with one long string
    return {"n": i, "blob": "x" * (BIG_BYTES - 20)}


def enqueue_batched(url: str, n: int, queues: list[str], task_type: str, kind: str = SMALL,
                    batch: int = 1000, start: int = 0) -> float:
    """Enqueue tasks start..start+n-1, round-robin over ``queues``; returns seconds taken."""
    if kind != SMALL:
        batch = min(batch, 50)
    with Client(url) as client:
        t0 = time.perf_counter()
        for lo in range(start, start + n, batch):
            hi = min(start + n, lo + batch)
            out = client.enqueue_many([(task_type, payload_for(kind, i), {"queue": queues[i % len(queues)]})
                                       for i in range(lo, hi)])
            errors = [r for r in out if isinstance(r, Exception)]
            if errors:
                raise RuntimeError(f"enqueue failed: {errors[0]}")
        return time.perf_counter() - t0


def enqueue_single(url: str, n: int, queue: str, task_type: str) -> float:
    with Client(url) as client:
        t0 = time.perf_counter()
        for i in range(n):
            client.enqueue(task_type, {"n": i}, queue=queue)
        return time.perf_counter() - t0


def _worker(url, n, queues, task_type, kind, start, out):
    out.put(enqueue_batched(url, n, queues, task_type, kind, start=start))


def enqueue_parallel(url: str, n: int, queues: list[str], task_type: str, kind: str = SMALL,
                     procs: int = 2, timeout: float = 600.0) -> float:
    """Bulk load with ``procs`` processes; returns the wall time. Processes are always reaped."""
    if procs <= 1 or n < 50_000:
        return enqueue_batched(url, n, queues, task_type, kind)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    share = -(-n // procs)
    workers = [ctx.Process(target=_worker, daemon=True,
                           args=(url, min(share, n - k * share), queues, task_type, kind, k * share, out))
               for k in range(procs)]
    t0 = time.perf_counter()
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + timeout
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        if any(w.is_alive() for w in workers) or any(w.exitcode != 0 for w in workers):
            raise RuntimeError(f"bulk enqueue failed or timed out (exit codes {[w.exitcode for w in workers]})")
        return time.perf_counter() - t0
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(5)
        out.close()


class BareProducer:
    """Writes a pending task the way any asynq producer would, with no Lua and no agent code
    on the write path: HSET the task hash, LPUSH its ID (MULTI/EXEC), SADD the queue name.
    The message bytes are the asynq protobuf (built with the generated message class)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._registered: set[str] = set()

    def enqueue(self, queue: str, task_type: str, payload: bytes, task_id: str | None = None) -> str:
        task_id = task_id or str(uuid.uuid4())
        msg = TaskMessage(type=task_type, payload=payload, id=task_id, queue=queue, retry=25,
                          timeout=1800).SerializeToString()
        if queue not in self._registered:
            self.redis.sadd(keys.ALL_QUEUES, queue)
            self._registered.add(queue)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.task_key(queue, task_id),
                  mapping={"msg": msg, "state": "pending", "pending_since": time.time_ns()})
        pipe.lpush(keys.pending(queue), task_id)
        pipe.execute()
        return task_id

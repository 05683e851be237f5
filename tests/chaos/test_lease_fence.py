"""The lease fence, fast and deterministic: an outcome that reaches Redis after the writer's
lease deadline is refused (the network-stall scenario shows it end to end)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from agent.broker import Broker, LeaseLostError, keys
from agent.broker.options import EnqueueOptions

Q = "fence"


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("retention", [0, 60])
async def test_late_outcomes_are_refused_by_redis(redis_url, r, batch, retention):
    broker = Broker(aioredis.Redis.from_url(redis_url), batch_outcomes=batch)
    try:
        await broker.enqueue_many([("t", b"", EnqueueOptions(queue=Q, task_id=f"T{i}", retention=retention))
                                   for i in range(4)])
        tasks, _ = await broker.dequeue(Q, count=4)
        # As if the writes had been sent in time but arrived 11 s after the lease (+ grace):
        # the local check passes (lease_valid), Redis's clock says too late.
        for task in tasks[:3]:
            task.lease_expiry = int(time.time()) - 11

            def still_valid(now=None):
                return True

            task.lease_valid = still_valid  # type: ignore[method-assign]
        results = await asyncio.gather(*(broker.complete(t) for t in tasks[:2]),
                                       broker.fail(tasks[2], "x"), return_exceptions=True)
        assert [type(x) for x in results] == [LeaseLostError] * 3, results
        # A batch merged from several tasks is fenced by its earliest deadline; a write in time
        # goes through.
        assert await broker.complete(tasks[3]) is None
        # The refused tasks are untouched: still active, left to recovery.
        active = {m.decode() for m in r.lrange(keys.active(Q), 0, -1)}
        assert active == {t.id for t in tasks[:3]}
        assert r.get(keys.processed_total(Q)) == b"1"
    finally:
        await broker.close()

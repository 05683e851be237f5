"""The lease fence, fast and deterministic: an outcome that reaches Redis after the writer's
lease deadline is refused (the network-stall scenario shows it end to end)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import fields

import pytest
import redis.asyncio as aioredis

from agent.broker import Broker, DequeuedTask, LeaseLostError, keys
from agent.broker.options import EnqueueOptions

Q = "fence"


class _SkewedClock(DequeuedTask):
    """A task whose holder believes its lease is valid (its clock is behind Redis's)."""

    def lease_valid(self, now=None) -> bool:
        return True


def _late(task: DequeuedTask) -> DequeuedTask:
    """The task as if its writes had been sent in time but arrived 11 s after the lease (+
    grace): the local check passes, Redis's clock says too late."""
    late = _SkewedClock(*(getattr(task, f.name) for f in fields(task)))
    late.lease_expiry = int(time.time()) - 11
    return late


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("retention", [0, 60])
async def test_late_outcomes_are_refused_by_redis(redis_url, r, batch, retention):
    broker = Broker(aioredis.Redis.from_url(redis_url), batch_outcomes=batch)
    try:
        await broker.enqueue_many([("t", b"", EnqueueOptions(queue=Q, task_id=f"T{i}", retention=retention))
                                   for i in range(4)])
        tasks, _ = await broker.dequeue(Q, count=4)
        tasks[:3] = [_late(task) for task in tasks[:3]]
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


async def test_a_merged_success_write_is_refused_when_late(redis_url, r):
    """The processor's done_many path: one call for many tasks, fenced by the earliest lease."""
    broker = Broker(aioredis.Redis.from_url(redis_url))
    try:
        await broker.enqueue_many([("t", b"", EnqueueOptions(queue=Q, task_id=f"T{i}")) for i in range(3)])
        tasks, _ = await broker.dequeue(Q, count=3)
        answers: asyncio.Future = asyncio.get_running_loop().create_future()
        broker.done_many_soon(Q, [tasks[0], _late(tasks[1])], answers.set_result)
        assert [type(x) for x in await answers] == [LeaseLostError] * 2
        # a lease known locally to have expired: that task is not written, the others are
        expired = DequeuedTask(*(getattr(tasks[2], f.name) for f in fields(tasks[2])))
        expired.lease_expiry = int(time.time()) - 1
        mixed: asyncio.Future = asyncio.get_running_loop().create_future()
        broker.done_many_soon(Q, [expired, tasks[0]], mixed.set_result)
        assert [type(x) for x in await mixed] == [LeaseLostError, type(None)]
        in_time: asyncio.Future = asyncio.get_running_loop().create_future()
        broker.done_many_soon(Q, [tasks[2]], in_time.set_result)
        assert await in_time == [None]
        assert [m.decode() for m in r.lrange(keys.active(Q), 0, -1)] == [tasks[1].id]
        assert r.get(keys.processed_total(Q)) == b"2"
    finally:
        await broker.close()

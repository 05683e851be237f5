"""The processor's direct path (no asyncio task per task) with a real child pool: a task_sdk
child (tests/children/sdk_app.py) answers over real pipes, outcomes go to a real Redis.

test_processor.py covers the same behaviours through the awaitable path (in-process handlers);
here every task must have been started directly, which each test checks.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from agent.broker import Broker, keys
from agent.broker.options import EnqueueOptions
from agent.runtime.leases import LeaseKeeper
from agent.runtime.processor import Processor
from agent.runtime.wakeup import QueueWaiters, WorkSignal
from agent.supervisor import ChildSpec, build_child_env, create_pool
from tests.test_processor import wait_for

CHILDREN = Path(__file__).parent / "children"
Q = "default"


class ChildHarness:
    """A processor serving queue ``default`` with one long_running task_sdk child."""

    def __init__(self, url: str, concurrency: int = 8) -> None:
        spec = ChildSpec(argv=[sys.executable, str(CHILDREN / "sdk_app.py")], cwd=CHILDREN,
                         env=build_child_env({}, {}, None), startup_timeout=10.0, queue=Q,
                         stop_grace=1.0, deadline_grace=0.3, prefetch=concurrency - 1)
        self.pool = create_pool(spec)
        self.client = aioredis.Redis.from_url(url)
        self.broker = Broker(self.client)
        self.signal = WorkSignal()
        self.waiters = QueueWaiters(aioredis.Redis.from_url(url), self.signal)
        self.leases = LeaseKeeper(redis.Redis.from_url(url), interval=0.2)
        self.processor = Processor(self.broker, {Q: 1}, concurrency=concurrency,
                                   executor_for=lambda q: self.pool, leases=self.leases,
                                   signal=self.signal, waiters=self.waiters)
        self.started_directly: set[str] = set()
        self._dispatch = self.processor._dispatch
        self.processor._dispatch = self._record_dispatch  # observe, not replace

    def _record_dispatch(self, tasks) -> None:
        self._dispatch(tasks)
        for task in tasks:
            entry = self.processor.in_flight.get(task.id)
            if entry is not None and entry.executor is not None and entry.handler is None:
                self.started_directly.add(task.id)

    async def __aenter__(self) -> ChildHarness:
        loop = asyncio.get_running_loop()
        # from the lease thread into the loop, as the agent does
        self.leases.on_lost = lambda task: loop.call_soon_threadsafe(self.processor.abandon, task)
        await self.pool.start()
        self.leases.start()
        self.run = asyncio.create_task(self.processor.run())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop(2.0)

    async def stop(self, drain_timeout: float) -> int:
        requeued = await self.processor.drain(drain_timeout)
        await self.run
        await self.waiters.stop()
        self.leases.stop()
        await self.pool.stop(grace=1.0)
        await self.waiters.client.aclose()
        await self.broker.close()
        return requeued


def _state(r, task_id: str) -> bytes | None:
    return r.hget(keys.task_key(Q, task_id), "state")


async def test_outcomes_of_directly_started_tasks(redis_url, r):
    tasks = [
        ("echo", {"n": 1}, EnqueueOptions(task_id="deleted")),
        ("echo", {"n": 2}, EnqueueOptions(task_id="kept", retention=600)),
        ("fail", "x", EnqueueOptions(task_id="failed", max_retry=3)),
        ("skip", None, EnqueueOptions(task_id="skipped")),
        ("retry_after", None, EnqueueOptions(task_id="later", max_retry=3)),
    ]
    tasks += [("echo", {"n": i}, EnqueueOptions(task_id=f"bulk{i}")) for i in range(40)]
    async with ChildHarness(redis_url) as h:
        await h.broker.enqueue_many([(t, json.dumps(p).encode(), o) for t, p, o in tasks])
        await wait_for(lambda: r.get(keys.processed_total(Q)) == str(len(tasks)).encode())
        assert {o.task_id for _, _, o in tasks} <= h.started_directly
    assert not r.exists(keys.task_key(Q, "deleted")) and not r.exists(keys.task_key(Q, "bulk39"))
    assert _state(r, "kept") == b"completed"
    assert json.loads(r.hget(keys.task_key(Q, "kept"), "result")) == {"n": 2}
    info = await Broker(aioredis.Redis.from_url(redis_url)).get_task(Q, "failed")
    assert info.state == "retry" and info.retried == 1 and "bad input" in info.last_error
    assert _state(r, "skipped") == b"archived"
    retry_at = r.zscore(keys.retry(Q), "later")
    assert retry_at is not None and abs(retry_at - (time.time() + 7.5)) < 3
    assert r.llen(keys.active(Q)) == 0 and r.zcard(keys.lease(Q)) == 0
    assert r.get(keys.failed_total(Q)) == b"3"


async def test_cancel_of_a_directly_started_task(redis_url, r):
    async with ChildHarness(redis_url) as h:
        await h.broker.enqueue("hang_async", b"{}", task_id="C", max_retry=2)
        await wait_for(lambda: "C" in h.processor.in_flight)
        assert "C" in h.started_directly
        assert h.processor.cancel("C")
        await wait_for(lambda: _state(r, "C") == b"retry")
        await wait_for(lambda: not h.pool.status()[0]["in_flight"])  # the child let go of it
        # the child still serves
        await h.broker.enqueue("echo", b'"after"', task_id="D", retention=60)
        await wait_for(lambda: _state(r, "D") == b"completed")
    info = await Broker(aioredis.Redis.from_url(redis_url)).get_task(Q, "C")
    assert info.last_error == "context canceled" and info.retried == 1


async def test_drain_requeues_directly_started_tasks(redis_url, r):
    h = ChildHarness(redis_url, concurrency=3)
    await h.__aenter__()
    await h.broker.enqueue_many([("hang_async", b"{}", EnqueueOptions(task_id=f"T{i}")) for i in range(5)])
    await wait_for(lambda: len(h.processor.in_flight) == 3)
    assert len(h.started_directly) == 3
    assert await h.stop(0.3) == 3
    assert r.llen(keys.active(Q)) == 0 and r.zcard(keys.lease(Q)) == 0
    assert sorted(x.decode() for x in r.lrange(keys.pending(Q), 0, -1)) == [f"T{i}" for i in range(5)]


async def test_lost_lease_of_a_directly_started_task_writes_nothing(redis_url, r):
    async with ChildHarness(redis_url) as h:
        await h.broker.enqueue("sleep_async", b'{"seconds": 1.0}', task_id="L", retention=60)
        await wait_for(lambda: "L" in h.processor.in_flight)
        assert "L" in h.started_directly
        # another agent recovers it meanwhile: the lease entry disappears
        r.zadd(keys.lease(Q), {"L": int(time.time()) - 100})
        await h.broker.recover_expired(Q)
        await wait_for(lambda: not h.processor.in_flight)  # the lease keeper noticed
        await asyncio.sleep(1.5)  # past the moment the child would have answered
    assert _state(r, "L") == b"retry"
    assert r.hget(keys.task_key(Q, "L"), "result") is None

"""The processor against a real Redis, with in-process handlers (InlineExecutor)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import redis
import redis.asyncio as aioredis

from agent.broker import Broker, keys
from agent.broker.options import EnqueueOptions
from agent.runtime.cancel import CancelListener
from agent.runtime.inline import InlineExecutor, SkipRetry
from agent.runtime.leases import LeaseKeeper
from agent.runtime.processor import Processor
from agent.runtime.wakeup import QueueWaiters, WorkSignal


class Harness:
    def __init__(self, url: str, weights, executor, concurrency=10, limits=None, strict=False):
        self.client = aioredis.Redis.from_url(url)
        self.broker = Broker(self.client)
        self.signal = WorkSignal()
        self.waiters = QueueWaiters(aioredis.Redis.from_url(url), self.signal)
        self.leases = LeaseKeeper(redis.Redis.from_url(url), interval=0.2)
        self.processor = Processor(self.broker, weights, concurrency=concurrency, limits=limits,
                                   strict=strict, executor_for=lambda q: executor, leases=self.leases,
                                   signal=self.signal, waiters=self.waiters)
        self.leases.on_lost = self.processor.abandon

    async def __aenter__(self):
        self.leases.start()
        self.run = asyncio.create_task(self.processor.run())
        return self

    async def __aexit__(self, *exc):
        await self.processor.drain(2.0)
        await self.run
        await self.waiters.stop()
        self.leases.stop()
        await self.waiters.client.aclose()
        await self.broker.close()


async def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_outcomes_are_recorded(redis_url, r):
    async def ok(payload, task):
        return {"echo": payload.decode()}

    async def boom(payload, task):
        raise ValueError("bad input")

    async def skip(payload, task):
        raise SkipRetry("never retry this")

    executor = InlineExecutor({"ok": ok, "boom": boom, "skip": skip})
    async with Harness(redis_url, {"default": 1}, executor) as h:
        await h.broker.enqueue("ok", b"hi", task_id="A", retention=60)
        await h.broker.enqueue("boom", b"", task_id="B")
        await h.broker.enqueue("skip", b"", task_id="C")
        await h.broker.enqueue("nohandler", b"", task_id="D")
        await wait_for(lambda: r.zcard(keys.archived("default")) == 2 and r.zcard(keys.retry("default")) == 1
                       and r.zcard(keys.completed("default")) == 1)
    assert r.hget(keys.task_key("default", "A"), "result") == b'{"echo": "hi"}'
    info = await Broker(aioredis.Redis.from_url(redis_url)).get_task("default", "B")
    assert info.last_error == "ValueError: bad input" and info.retried == 1
    assert r.llen(keys.active("default")) == 0


async def test_wakes_at_once_for_any_producer(redis_url, r):
    done: list[float] = []

    async def record(payload, task):
        done.append(time.monotonic())

    async with Harness(redis_url, {"default": 1}, InlineExecutor({}, default=record)):
        await asyncio.sleep(1.5)  # idle long enough for the processor to block
        latencies = []
        for i in range(20):
            sent = time.monotonic()
            # a bare producer writing asynq keys, like a Go client would
            r.hset(keys.task_key("default", f"T{i}"), mapping={"msg": _msg(f"T{i}"), "state": "pending"})
            r.lpush(keys.pending("default"), f"T{i}")
            await wait_for(lambda n=i: len(done) > n, timeout=2)
            latencies.append(done[-1] - sent)
            await asyncio.sleep(0.05)
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.05, latencies  # far below asynq's 0.5-1.5 s poll


def _msg(task_id: str) -> bytes:
    from agent.broker.messages import TaskMessage, encode

    return encode(TaskMessage(type="t", id=task_id, queue="default", retry=3, timeout=60))


async def test_concurrency_and_queue_limits(redis_url, r):
    running = Counter()
    peak = Counter()

    async def slow(payload, task):
        running[task.queue] += 1
        running["all"] += 1
        peak[task.queue] = max(peak[task.queue], running[task.queue])
        peak["all"] = max(peak["all"], running["all"])
        await asyncio.sleep(0.05)
        running[task.queue] -= 1
        running["all"] -= 1

    async with Harness(redis_url, {"a": 1, "b": 1}, InlineExecutor({}, default=slow),
                       concurrency=6, limits={"a": 2}) as h:
        await h.broker.enqueue_many([("t", b"", EnqueueOptions(queue=q)) for q in ("a", "b") for _ in range(30)])
        await wait_for(lambda: r.get(keys.processed_total("a")) == b"30" and r.get(keys.processed_total("b")) == b"30")
    assert peak["a"] <= 2 and peak["all"] <= 6 and peak["b"] >= 3, peak


async def test_paused_queue_is_not_served(redis_url, r):
    seen = []

    async def record(payload, task):
        seen.append(task.queue)

    async with Harness(redis_url, {"a": 1, "b": 1}, InlineExecutor({}, default=record)) as h:
        await h.broker.pause("a")
        await h.broker.enqueue("t", b"", queue="a")
        await h.broker.enqueue("t", b"", queue="b")
        await wait_for(lambda: seen == ["b"])
        await asyncio.sleep(1.5)
        assert seen == ["b"] and r.llen(keys.pending("a")) == 1
        await h.broker.unpause("a")
        await wait_for(lambda: seen == ["b", "a"], timeout=5)


async def test_cancel_through_asynq_channel(redis_url, r):
    started = asyncio.Event()

    async def forever(payload, task):
        started.set()
        await asyncio.sleep(3600)

    async with Harness(redis_url, {"default": 1}, InlineExecutor({}, default=forever)) as h:
        listener = CancelListener(aioredis.Redis.from_url(redis_url), h.processor.cancel)
        listener.start()
        await asyncio.wait_for(listener.ready.wait(), 5)
        await h.broker.enqueue("t", b"", task_id="X")
        await asyncio.wait_for(started.wait(), 5)
        r.publish(keys.CANCEL_CHANNEL, "X")
        await wait_for(lambda: r.hget(keys.task_key("default", "X"), "state") == b"retry")
        await listener.stop()
        await listener.client.aclose()
    info = await Broker(aioredis.Redis.from_url(redis_url)).get_task("default", "X")
    assert info.last_error == "context canceled" and info.retried == 1


async def test_drain_requeues_what_is_left(redis_url, r):
    async def forever(payload, task):
        await asyncio.sleep(3600)

    h = Harness(redis_url, {"default": 1}, InlineExecutor({}, default=forever), concurrency=3)
    await h.__aenter__()
    await h.broker.enqueue_many([("t", b"", EnqueueOptions(task_id=f"T{i}")) for i in range(5)])
    await wait_for(lambda: r.llen(keys.active("default")) == 3)
    requeued = await h.processor.drain(0.3)
    assert requeued == 3
    await h.run
    assert r.llen(keys.active("default")) == 0 and r.zcard(keys.lease("default")) == 0
    assert sorted(x.decode() for x in r.lrange(keys.pending("default"), 0, -1)) == [f"T{i}" for i in range(5)]
    await h.waiters.stop()
    h.leases.stop()
    await h.broker.close()


async def test_lease_lost_means_no_outcome_written(redis_url, r):
    release = asyncio.Event()

    async def wait_release(payload, task):
        await release.wait()
        return "late"

    async with Harness(redis_url, {"default": 1}, InlineExecutor({}, default=wait_release)) as h:
        await h.broker.enqueue("t", b"", task_id="L", retention=60)
        await wait_for(lambda: r.llen(keys.active("default")) == 1)
        # another agent recovers it meanwhile: the lease entry disappears
        r.zadd(keys.lease("default"), {"L": int(time.time()) - 100})
        await h.broker.recover_expired("default")
        await wait_for(lambda: not h.processor.in_flight)  # the lease keeper noticed
        release.set()
        await asyncio.sleep(0.3)
    assert r.hget(keys.task_key("default", "L"), "state") == b"retry"
    assert r.hget(keys.task_key("default", "L"), "result") is None


@pytest.mark.parametrize("strict", [False, True])
async def test_weighted_and_strict_order_over_a_backlog(redis_url, r, strict):
    order: list[str] = []

    async def record(payload, task):
        order.append(task.queue)

    weights = {"critical": 6, "default": 3, "low": 1}
    h = Harness(redis_url, weights, InlineExecutor({}, default=record), concurrency=1, strict=strict)
    await h.broker.enqueue_many([("t", b"", EnqueueOptions(queue=q)) for q in weights for _ in range(300)])
    async with h:
        await wait_for(lambda: len(order) >= 300, timeout=20)
    first = Counter(order[:300])
    if strict:
        assert first == {"critical": 300}
    else:
        assert abs(first["critical"] / 300 - 0.6) < 0.1 and first["low"] < 60, first


async def test_many_queues_take_whole_batches_in_weighted_odds(redis_url, r):
    order: list[str] = []

    async def record(payload, task):
        order.append(task.queue)

    weights = {"q0": 5, **{f"q{i}": 1 for i in range(1, 6)}}
    h = Harness(redis_url, weights, InlineExecutor({}, default=record), concurrency=16)
    await h.broker.enqueue_many([("t", b"", EnqueueOptions(queue=q)) for q in weights
                                 for _ in range(2000 if q == "q0" else 600)])
    async with h:
        await wait_for(lambda: len(order) >= 2000, timeout=60)
    share = Counter(order[:2000])["q0"] / 2000  # every queue still has a backlog here
    # 2,000 tasks are about 125 draws of a whole batch (fewer, larger ones when the machine is
    # busy), so the share's standard deviation is about 0.045: 0.15 is over 3 of them, and still
    # far from equal odds (1/6) or strict priority (1.0)
    assert abs(share - 0.5) < 0.15, share


async def test_a_failing_fetch_loop_is_reported_until_it_recovers(redis_url, r):
    class Flaky(InlineExecutor):
        broken = True

        def placeable(self, room):
            if self.broken:
                raise RuntimeError("placement exploded")
            return int(min(room, 10))

    async def ok(payload, task):
        return "ok"

    executor = Flaky({"ok": ok})
    async with Harness(redis_url, {"default": 1}, executor) as h:
        await wait_for(lambda: h.processor.loop_error == "RuntimeError: placement exploded")
        await h.broker.enqueue("ok", b"", task_id="A", retention=60)
        executor.broken = False
        await wait_for(lambda: r.zcard(keys.completed("default")) == 1, timeout=5)
        assert h.processor.loop_error == ""

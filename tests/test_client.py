"""The producer clients against a real Redis."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis.asyncio as aioredis

from agent.broker import Broker, DuplicateTaskError, TaskIDConflictError, TaskNotFoundError, keys
from agent.client import AsyncClient, Client


def test_enqueue_payload_forms_and_get_task(redis_url):
    with Client(redis_url) as client:
        a = client.enqueue("t", {"n": 1}, task_id="json")
        client.enqueue("t", "text", task_id="str")
        client.enqueue("t", b"\x00raw", task_id="bytes")
        assert (a.state, a.queue, a.max_retry) == ("pending", "default", 25)
        assert client.get_task("default", "json").payload == b'{"n":1}'
        assert client.get_task("default", "str").payload == b"text"
        assert client.get_task("default", "bytes").payload == b"\x00raw"
        later = client.enqueue("t", None, queue="low", process_in=60, max_retry=2)
        info = client.get_task("low", later.id)
        assert info.state == "scheduled" and info.next_process_at == later.next_process_at
        with pytest.raises(TaskIDConflictError):
            client.enqueue("t", None, task_id="json")
        client.enqueue("u", "x", unique_ttl=60)
        with pytest.raises(DuplicateTaskError):
            client.enqueue("u", "x", unique_ttl=60)
        with pytest.raises(TaskNotFoundError):
            client.get_task("default", "nope")


def test_enqueue_many_in_one_round_trip(redis_url, r):
    with Client(redis_url) as client:
        out = client.enqueue_many([("t", {"i": i}, {"queue": "bulk"}) for i in range(500)])
        assert all(not isinstance(x, Exception) for x in out)
        assert r.llen(keys.pending("bulk")) == 500 and r.sismember(keys.ALL_QUEUES, "bulk")


def test_wait_sees_completion_by_a_worker(redis_url):
    async def work() -> None:
        broker = Broker(aioredis.Redis.from_url(redis_url))
        await asyncio.sleep(0.2)
        [task], _ = await broker.dequeue("default")
        await broker.complete(task, result=b'{"ok":1}')
        await broker.close()

    with Client(redis_url) as client:
        info = client.enqueue("t", None, retention=60)
        worker = threading.Thread(target=asyncio.run, args=(work(),))
        worker.start()
        done = client.wait("default", info.id, timeout=5)
        worker.join()
        assert done.state == "completed" and done.result_json() == {"ok": 1}
        quick = client.enqueue("t", None)
        with pytest.raises(TimeoutError, match="still pending"):
            client.wait("default", quick.id, timeout=0.2)


async def test_async_client(redis_url):
    async with AsyncClient(redis_url) as client:
        info = await client.enqueue("t", [1, 2], queue="aq", deadline=time.time() + 60)
        got = await client.get_task("aq", info.id)
        assert got.state == "pending" and got.payload == b"[1,2]"

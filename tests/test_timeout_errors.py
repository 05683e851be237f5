"""A task past its deadline is recorded with asynq's error text first (``context deadline
exceeded``, which asynq tooling and users search for), then ours: how long the handler had,
and what was done about it. Through the real path: a processor, a real Redis and, for
children, a real task_sdk child (tests/children/sdk_app.py)."""

from __future__ import annotations

import asyncio
import re
import time

import redis.asyncio as aioredis

from agent.broker import Broker, keys
from agent.broker.options import EnqueueOptions
from agent.runtime.inline import InlineExecutor
from tests.test_processor import Harness, wait_for
from tests.test_processor_children import ChildHarness

Q = "default"


async def _task(url: str, task_id: str):
    broker = Broker(aioredis.Redis.from_url(url))
    try:
        return await broker.get_task(Q, task_id)
    finally:
        await broker.close()


async def test_a_hung_sync_handler_is_archived_and_retried_with_asynqs_text(redis_url, r):
    async with ChildHarness(redis_url, concurrency=2) as h:
        await h.broker.enqueue("hang_sync", b"null", EnqueueOptions(task_id="last", timeout=1, max_retry=0))
        await h.broker.enqueue("hang_sync", b"null", EnqueueOptions(task_id="again", timeout=1, max_retry=3))
        await wait_for(lambda: r.zcard(keys.archived(Q)) == 1 and r.zcard(keys.retry(Q)) == 1,
                       timeout=20)
    text = (r"context deadline exceeded: task exceeded its deadline of 1s "
            r"\(its timeout; child process \d+ killed and replaced\)")
    archived = await _task(redis_url, "last")
    assert archived.state == "archived" and re.fullmatch(text, archived.last_error), archived
    retried = await _task(redis_url, "again")
    assert retried.state == "retry" and retried.retried == 1
    assert re.fullmatch(text, retried.last_error), retried


async def test_a_hung_async_handler_cancelled_by_the_sdk_has_asynqs_text(redis_url, r):
    async with ChildHarness(redis_url) as h:
        await h.broker.enqueue("hang_async", b"null", EnqueueOptions(task_id="a", timeout=1, max_retry=0))
        await wait_for(lambda: r.zcard(keys.archived(Q)) == 1, timeout=20)
    archived = await _task(redis_url, "a")
    assert archived.last_error == ("context deadline exceeded: task exceeded its deadline of 1s "
                                   "(its async handler was cancelled)")


async def test_an_inline_handler_past_its_deadline_has_asynqs_text(redis_url, r):
    async def hang(payload, task):
        await asyncio.sleep(60)

    async with Harness(redis_url, {Q: 1}, InlineExecutor({"hang": hang})) as h:
        await h.broker.enqueue("hang", b"", task_id="i", timeout=1, max_retry=0)
        await wait_for(lambda: r.zcard(keys.archived(Q)) == 1, timeout=20)
    archived = await _task(redis_url, "i")
    assert archived.last_error == ("context deadline exceeded: task exceeded its deadline of 1s "
                                   "(the handler was cancelled)")


async def test_a_task_whose_deadline_passed_before_it_was_dequeued_is_not_run(redis_url, r):
    ran = []

    async def record(payload, task):
        ran.append(task.id)

    past = int(time.time()) - 5
    async with Harness(redis_url, {Q: 1}, InlineExecutor({"late": record})) as h:
        await h.broker.enqueue("late", b"", EnqueueOptions(task_id="late", deadline=past, max_retry=0))
        await wait_for(lambda: r.zcard(keys.archived(Q)) == 1, timeout=20)
    archived = await _task(redis_url, "late")
    assert ran == []
    assert archived.last_error == ("context deadline exceeded: the task's deadline had passed when it "
                                   "was dequeued; not run")

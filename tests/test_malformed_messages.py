"""Malformed task messages (not protobuf, truncated, invalid UTF-8, another task's ID or queue)
through the real dequeue path: a Processor on a real Redis archives each with the reason,
readable as asynq's LastErr through the Inspector and the CLI, keeps the original bytes, and
logs one WARNING line naming queue and ID."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner

from agent.broker import Broker, keys
from agent.broker.malformed import RAW_MSG_FIELD
from agent.broker.messages import TaskMessage, decode_task_message, encode
from agent.inspect import Inspector
from agent.inspect.cli import inspect_cli
from agent.runtime.inline import Handler, InlineExecutor
from agent.runtime.leases import LeaseKeeper
from agent.runtime.processor import Processor
from agent.runtime.wakeup import QueueWaiters, WorkSignal

Q = "malformed"
ID = "task-1"


def _valid(**fields) -> bytes:
    base = dict(type="email:send", payload=b'{"to": "ada"}', id=ID, queue=Q, retry=5, timeout=60)
    return encode(TaskMessage(**{**base, **fields}))


# (case, msg bytes, what the reason must contain, the type archived)
CASES = [
    ("random bytes", b"\xff\xfe not protobuf \x00\x01", "undecodable asynq TaskMessage (18 bytes): ", ""),
    ("invalid UTF-8 in type", b"\x0a\x02\xff\xfe", "undecodable asynq TaskMessage (4 bytes): ", ""),
    ("truncated", _valid(payload=b"x" * 50)[:20], "undecodable asynq TaskMessage (20 bytes): ", ""),
    ("another ID", _valid(id="someone-else"),
     f"invalid asynq TaskMessage: it names task 'someone-else' of queue '{Q}' but was found as "
     f"task '{ID}' of queue '{Q}'", "email:send"),
    ("another queue", _valid(queue="elsewhere"),
     f"invalid asynq TaskMessage: it names task '{ID}' of queue 'elsewhere' but was found as "
     f"task '{ID}' of queue '{Q}'", "email:send"),
    ("a huge foreign ID", _valid(id="x" * 100_000),
     "it names task 'xxxxxxxxxx", "email:send"),
]


async def run_processor(url: str, queue: str, handlers: dict[str, Handler], until_empty: float = 8.0
                        ) -> dict:
    """Run a Processor with in-process handlers on ``queue`` until pending and active are
    empty (or ``until_empty`` s pass), drain it; returns what it held at the end."""
    executor = InlineExecutor(handlers)
    broker = Broker(aioredis.Redis.from_url(url))
    signal = WorkSignal()
    waiters = QueueWaiters(aioredis.Redis.from_url(url), signal)
    leases = LeaseKeeper(redis.Redis.from_url(url), interval=0.2)
    processor = Processor(broker, {queue: 1}, concurrency=4, executor_for=lambda q: executor,
                          leases=leases, signal=signal, waiters=waiters)
    leases.on_lost = processor.abandon
    leases.start()
    run = asyncio.create_task(processor.run())
    r = redis.Redis.from_url(url)
    try:
        end = time.monotonic() + until_empty
        while time.monotonic() < end:
            await asyncio.sleep(0.05)
            if (r.llen(keys.pending(queue)) == 0 and r.llen(keys.active(queue)) == 0
                    and not processor.in_flight):
                break
        state = {"alive": not run.done(), "in_flight": len(processor.in_flight),
                 "per_queue": dict(processor.per_queue)}
    finally:
        await processor.drain(2.0)
        await run
        await waiters.stop()
        leases.stop()
        await waiters.client.aclose()
        await broker.close()
        r.close()
    return state


def _warnings_about(caplog, task_id: str) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records
            if rec.levelno == logging.WARNING and task_id in rec.getMessage()]


@pytest.mark.parametrize(("case", "raw", "reason", "archived_type"), CASES, ids=[c[0] for c in CASES])
async def test_malformed_message_is_archived_with_its_reason_and_one_warning(
        redis_url, r, caplog, case, raw, reason, archived_type):
    caplog.set_level(logging.WARNING)
    r.sadd(keys.ALL_QUEUES, Q)
    r.hset(keys.task_key(Q, ID), mapping={"msg": raw, "state": "pending"})
    r.lpush(keys.pending(Q), ID)
    before = int(time.time())

    state = await run_processor(redis_url, Q, {})

    assert state["alive"] and state["in_flight"] == 0
    assert r.llen(keys.active(Q)) == 0 and r.zcard(keys.lease(Q)) == 0
    # As Go's Inspector reads it: a decodable msg whose error_msg is the reason (LastErr).
    with Inspector.from_url(redis_url) as inspector:
        task = inspector.get_task(Q, ID)
    assert task.state == "archived" and task.decodable, task
    assert reason in task.last_error and task.type == archived_type
    assert before <= task.last_failed_at <= time.time()
    msg = decode_task_message(r.hget(keys.task_key(Q, ID), "msg"))
    assert (msg.id, msg.queue, msg.error_msg, msg.retried) == (ID, Q, task.last_error, 0)
    assert r.hget(keys.task_key(Q, ID), RAW_MSG_FIELD) == raw
    assert r.hget(keys.task_key(Q, ID), "fenced_lease") is None
    score = r.zscore(keys.archived(Q), ID)
    assert score == int(score) and before <= score <= time.time()  # unix s, as Go parses it
    assert (r.get(keys.processed_total(Q)), r.get(keys.failed_total(Q))) == (b"1", b"1")

    # One WARNING line with queue, ID and the reason.
    [warning] = _warnings_about(caplog, ID)
    line = warning.getMessage()
    assert Q in line and reason in line and RAW_MSG_FIELD in line
    assert len(line) < 1000  # a huge foreign ID is quoted shortened, not whole

    # The CLI shows the reason.
    runner = CliRunner()
    shown = runner.invoke(inspect_cli, ["--redis", redis_url, "task", "show", Q, ID])
    assert shown.exit_code == 0, shown.output
    assert f"Last error:   {task.last_error}\n" in shown.output
    as_json = runner.invoke(inspect_cli, ["--redis", redis_url, "--json", "task", "show", Q, ID])
    assert json.loads(as_json.output)["last_error"] == task.last_error


async def test_malformed_message_found_by_recovery_is_archived_with_its_reason(redis_url, r, caplog):
    """A malformed message in active whose lease expired (a crashed holder): the recoverer
    archives it the same way, the reason prefixed by the lease expiry."""
    caplog.set_level(logging.WARNING)
    raw = b"\xff\xfe not protobuf"
    r.hset(keys.task_key(Q, ID), mapping={"msg": raw, "state": "active"})
    r.lpush(keys.active(Q), ID)
    r.zadd(keys.lease(Q), {ID: int(time.time()) - 3600})  # asynq's rule: 30 s after the lease
    broker = Broker(aioredis.Redis.from_url(redis_url))
    try:
        assert await broker.recover_expired(Q) == {"retry": 0, "archived": 1, "orphans": 0}
    finally:
        await broker.close()
    msg = decode_task_message(r.hget(keys.task_key(Q, ID), "msg"))
    assert (msg.id, msg.queue, msg.type) == (ID, Q, "")
    assert msg.error_msg.startswith("asynq: task lease expired; undecodable asynq TaskMessage (15 bytes): ")
    assert r.hget(keys.task_key(Q, ID), RAW_MSG_FIELD) == raw
    [warning] = _warnings_about(caplog, ID)
    assert Q in warning.getMessage() and msg.error_msg in warning.getMessage()


async def test_well_formed_messages_keep_no_raw_copy(redis_url, r):
    """Only a malformed message has its bytes kept: an ordinary archive writes no extra field."""
    r.hset(keys.task_key(Q, ID), mapping={"msg": _valid(retry=0, type="nobody"), "state": "pending"})
    r.lpush(keys.pending(Q), ID)
    await run_processor(redis_url, Q, {})
    assert r.hget(keys.task_key(Q, ID), "state") == b"archived"
    assert r.hget(keys.task_key(Q, ID), RAW_MSG_FIELD) is None
    assert "no handler for task type 'nobody'" in decode_task_message(
        r.hget(keys.task_key(Q, ID), "msg")).error_msg

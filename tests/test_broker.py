"""Broker behaviour beyond the spec's scenarios: batches, bad data, lease safety."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from agent.broker import Broker, LeaseLostError, TaskNotFoundError, keys
from agent.broker.malformed import RAW_MSG_FIELD
from agent.broker.messages import TaskMessage, decode_task_message, encode
from agent.broker.options import EnqueueOptions
from tests.keystate import key_state

Q = "default"


@pytest.fixture
async def broker(redis_url):
    b = Broker(aioredis.Redis.from_url(redis_url))
    yield b
    await b.close()


async def test_batch_dequeue_takes_oldest_first(broker, r):
    results = await broker.enqueue_many([("t", b"", EnqueueOptions(task_id=f"T{i}")) for i in range(10)])
    assert [x.id for x in results] == [f"T{i}" for i in range(10)]
    tasks, orphans = await broker.dequeue(Q, count=4)
    assert [t.id for t in tasks] == ["T0", "T1", "T2", "T3"] and orphans == []
    assert r.llen(keys.active(Q)) == 4 and r.zcard(keys.lease(Q)) == 4


async def test_enqueue_many_reports_conflicts_per_item(broker):
    await broker.enqueue("t", b"", task_id="dup")
    results = await broker.enqueue_many([("t", b"", EnqueueOptions(task_id="dup")),
                                         ("t", b"", EnqueueOptions(task_id="fresh"))])
    assert isinstance(results[0], Exception) and "conflicts" in str(results[0])
    assert results[1].id == "fresh"


async def test_orphan_id_is_dropped_not_left_active(broker, r):
    r.lpush(keys.pending(Q), "ghost")
    await broker.enqueue("t", b"", task_id="real")
    tasks, orphans = await broker.dequeue(Q, count=5)
    assert orphans == ["ghost"] and [t.id for t in tasks] == ["real"]
    assert r.lrange(keys.active(Q), 0, -1) == [b"real"]
    assert not r.exists(keys.task_key(Q, "ghost"))  # no stub hash created


async def test_undecodable_message_is_archived_with_its_bytes_kept(broker, r):
    bad = b"\x0a\x02\xff\xfe"  # field 1 (string) with invalid UTF-8
    r.hset(keys.task_key(Q, "bad"), mapping={"msg": bad, "state": "pending"})
    r.lpush(keys.pending(Q), "bad")
    [task], _ = await broker.dequeue(Q)
    assert task.message is None and "undecodable" in task.decode_error
    assert await broker.fail(task, task.decode_error) == "archived"
    # a valid stand-in msg carries the reason (asynq's LastErr); the original bytes are kept
    stand_in = decode_task_message(r.hget(keys.task_key(Q, "bad"), "msg"))
    assert (stand_in.id, stand_in.queue, stand_in.error_msg) == ("bad", Q, task.decode_error)
    assert r.hget(keys.task_key(Q, "bad"), RAW_MSG_FIELD) == bad
    assert r.zscore(keys.archived(Q), "bad") is not None


async def test_no_write_after_lease_expiry(broker, r):
    await broker.enqueue("t", b"", task_id="A")
    [task], _ = await broker.dequeue(Q)
    task.lease_expiry = int(time.time()) - 1
    before = key_state(r)
    for attempt in (broker.complete(task), broker.fail(task, "x"), broker.requeue(task)):
        with pytest.raises(LeaseLostError):
            await attempt
    assert key_state(r) == before


async def test_late_outcome_after_recovery_is_refused(broker, r):
    await broker.enqueue("t", b"", task_id="A")
    [task], _ = await broker.dequeue(Q)
    r.zadd(keys.lease(Q), {"A": int(time.time()) - 60})
    await broker.recover_expired(Q)
    with pytest.raises(TaskNotFoundError):
        await broker.complete(task)  # our in-memory lease still looks valid; Redis says no
    assert r.hget(keys.task_key(Q, "A"), "state") == b"retry"


async def test_reconciler_finds_active_ids_without_lease(broker, r):
    await broker.enqueue("t", b"", task_id="A")
    await broker.dequeue(Q)
    r.zrem(keys.lease(Q), "A")
    assert await broker.lease_orphaned_active(Q) == ["A"]
    assert await broker.lease_orphaned_active(Q) == []
    assert (await broker.recover_expired(Q))["retry"] == 1
    assert r.hget(keys.task_key(Q, "A"), "state") == b"retry"


async def test_unknown_fields_survive_a_rewrite(broker, r):
    msg = TaskMessage(type="t", id="A", queue=Q, retry=5, timeout=60)
    data = encode(msg) + b"\xa8\x01\x07"  # field 21 (varint 7), unknown to us
    r.hset(keys.task_key(Q, "A"), mapping={"msg": data, "state": "pending"})
    r.lpush(keys.pending(Q), "A")
    [task], _ = await broker.dequeue(Q)
    await broker.fail(task, "boom")
    rewritten = r.hget(keys.task_key(Q, "A"), "msg")
    assert b"\xa8\x01\x07" in rewritten
    assert decode_task_message(rewritten).retried == 1


async def test_scheduled_unique_lock_covers_the_wait(broker, r):
    await broker.enqueue("t", b"x", task_id="A", process_in=100, unique_ttl=60)
    lock = keys.unique_key(Q, "t", b"x")
    assert 155 <= r.ttl(lock) <= 160


def test_options_reject_bad_values():
    from agent.broker.options import build_message

    for zero in (dict(timeout=0), dict(deadline=0), dict(timeout=0.5)):
        assert build_message("t", b"", EnqueueOptions(**zero)).timeout == 1800  # as asynq.Client
    for bad in (dict(queue=" "), dict(task_id=""), dict(unique_ttl=0.5), dict(timeout=-1),
                dict(process_at=1, process_in=1), dict(group=" ")):
        with pytest.raises(ValueError):
            build_message("t", b"", EnqueueOptions(**bad))
    with pytest.raises(ValueError):
        build_message(" ", b"", EnqueueOptions())
    assert build_message("t", b"", EnqueueOptions(max_retry=-3)).retry == 0
    assert EnqueueOptions(process_in=-10).process_time(100.0) == 100.0  # a past time means now
    only_deadline = build_message("t", b"", EnqueueOptions(deadline=2_000_000_000))
    assert (only_deadline.timeout, only_deadline.deadline) == (0, 2_000_000_000)


async def test_outcomes_written_together_are_batched_and_survive_script_flush(broker, r):
    import asyncio

    await broker.enqueue_many([("t", b"", EnqueueOptions(task_id=f"T{i}")) for i in range(300)])
    tasks, _ = await broker.dequeue(Q, count=300)
    r.config_resetstat()
    await asyncio.gather(*(broker.complete(t) for t in tasks[:150]))
    calls = r.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls == 1  # 150 successes of one queue: one merged done_many call
    r.script_flush()  # as after a Redis restart: the batcher reloads and redoes
    results = await asyncio.gather(*(broker.fail(t, "x") for t in tasks[150:]), return_exceptions=True)
    assert results == ["retry"] * 150
    assert r.get(keys.processed_total(Q)) == b"300" and r.zcard(keys.retry(Q)) == 150
    assert r.llen(keys.active(Q)) == 0


@pytest.mark.parametrize("retention", [0, 3600])
async def test_merged_successes_leave_the_same_state_as_single_calls(redis_url, r, retention):
    """done_many / complete_many against done / mark_complete, task for task."""
    import asyncio

    single = Broker(aioredis.Redis.from_url(redis_url), batch_outcomes=False)
    merged = Broker(aioredis.Redis.from_url(redis_url))
    states = {}
    for name, broker in (("single", single), ("merged", merged)):
        r.flushall()
        opts = [EnqueueOptions(task_id=f"T{i}", retention=retention,
                               unique_ttl=60 if i % 2 else None) for i in range(6)]
        await broker.enqueue_many([("t", f"p{i}".encode(), o) for i, o in enumerate(opts)])
        tasks, _ = await broker.dequeue(Q, count=6)
        r.lrem(keys.active(Q), 0, "T3")  # one of them is no longer ours
        results = await asyncio.gather(
            *(broker.complete(t, result=b'{"n":1}' if i % 3 else None) for i, t in enumerate(tasks)),
            return_exceptions=True)
        assert [type(x).__name__ for x in results] == ["NoneType"] * 3 + ["TaskNotFoundError"] + ["NoneType"] * 2
        state = key_state(r)
        for key, value in state.items():
            if ":{default}:t:" in key:  # completed_at may differ by a second between runs
                value["msg"] = decode_task_message(value["msg"]).type
                if "fenced_lease" in value:  # a lease's expiry time, likewise
                    value["fenced_lease"] = "<time>"
            if key.endswith((":completed", ":lease")):  # scores: times, may differ by a second
                state[key] = sorted(value)
        states[name] = state
    assert states["single"] == states["merged"]
    await single.close()
    await merged.close()

"""Task messages through a real Broker and Processor (real Redis, in-process handlers): random
bytes in ``msg``, invalid UTF-8, a missing hash or ``msg`` field, a wrong ``state``, a message
naming another queue or ID, huge payloads. Each task ends recorded (completed, retry or
archived with an error) or dropped as an orphan; nothing stays active, no slot stays taken,
and the processor keeps running."""

from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from agent.broker import Broker, keys
from agent.broker.messages import TaskMessage, encode
from agent.runtime.inline import InlineExecutor
from agent.runtime.leases import LeaseKeeper
from agent.runtime.processor import Processor
from agent.runtime.wakeup import QueueWaiters, WorkSignal
from tests.fuzz.settings import bounded

QUEUE = "fuzz"


def _text(valid: bool):
    return st.text(max_size=20) if valid else st.binary(max_size=20).map(lambda b: b.decode("latin-1"))


messages = st.builds(
    lambda type_, payload, retry, retried, timeout, deadline, retention, other_queue, other_id: dict(
        type=type_, payload=payload, retry=retry, retried=retried, timeout=timeout, deadline=deadline,
        retention=retention, other_queue=other_queue, other_id=other_id),
    st.sampled_from(["echo", "boom", "unknown"]) | st.text(max_size=12),
    st.binary(max_size=300) | st.sampled_from([b"\xff\xfe\xfd", b'{"a": 1}', b"\x00" * 10]),
    st.integers(0, 30), st.integers(0, 40), st.integers(0, 3600), st.sampled_from([0, 1, 2**40]),
    st.sampled_from([0, 0, 60]), st.booleans(), st.booleans())

entries = st.one_of(
    st.tuples(st.just("valid"), messages, st.sampled_from(["pending", "active", "weird", ""])),
    st.tuples(st.just("garbage"), st.binary(max_size=200), st.sampled_from(["pending", "zzz"])),
    st.tuples(st.just("invalid_utf8"), st.just(b"\n\x03\xff\xfe\xfd\x12\x00\x1a\x02id\"\x04fuzz"),
              st.just("pending")),
    st.tuples(st.just("missing_hash"), st.none(), st.none()),
    st.tuples(st.just("no_msg_field"), st.none(), st.just("pending")),
    st.tuples(st.just("huge"), st.integers(1 << 20, 4 << 20), st.just("pending")),
)


def _write(r: redis.Redis, n: int, kind: str, data, state) -> str:
    task_id = f"t{n}"
    key = keys.task_key(QUEUE, task_id)
    if kind == "valid":
        msg = TaskMessage(type=data["type"], payload=data["payload"], retry=data["retry"],
                          retried=min(data["retried"], data["retry"]), timeout=data["timeout"],
                          deadline=data["deadline"], retention=data["retention"],
                          queue="elsewhere" if data["other_queue"] else QUEUE,
                          id=f"x{n}" if data["other_id"] else task_id)
        r.hset(key, mapping={"msg": encode(msg), "state": state})
    elif kind in ("garbage", "invalid_utf8"):
        r.hset(key, mapping={"msg": data, "state": state})
    elif kind == "no_msg_field":
        r.hset(key, mapping={"state": state})
    elif kind == "huge":
        msg = TaskMessage(type="echo", payload=b"x" * data, queue=QUEUE, id=task_id, retry=1, timeout=60)
        r.hset(key, mapping={"msg": encode(msg), "state": "pending"})
    r.lpush(keys.pending(QUEUE), task_id)
    return task_id


async def _run(url: str, expected: int) -> tuple[Processor, dict]:
    async def echo(payload, task):
        return {"n": len(payload)}

    async def boom(payload, task):
        raise ValueError("boom")

    executor = InlineExecutor({"echo": echo, "boom": boom})
    client = aioredis.Redis.from_url(url)
    broker = Broker(client)
    signal = WorkSignal()
    waiters = QueueWaiters(aioredis.Redis.from_url(url), signal)
    leases = LeaseKeeper(redis.Redis.from_url(url), interval=0.2)
    processor = Processor(broker, {QUEUE: 1}, concurrency=4, executor_for=lambda q: executor,
                          leases=leases, signal=signal, waiters=waiters)
    leases.on_lost = processor.abandon
    leases.start()
    run = asyncio.create_task(processor.run())
    r = redis.Redis.from_url(url)
    try:
        end = time.monotonic() + 8
        while time.monotonic() < end:
            await asyncio.sleep(0.05)
            if (r.llen(keys.pending(QUEUE)) == 0 and r.llen(keys.active(QUEUE)) == 0
                    and not processor.in_flight):
                break
        alive = not run.done()
        state = {"in_flight": len(processor.in_flight), "alive": alive,
                 "per_queue": dict(processor.per_queue)}
    finally:
        await processor.drain(2.0)
        await run
        await waiters.stop()
        leases.stop()
        await waiters.client.aclose()
        await broker.close()
        r.close()
    return processor, state


@bounded(40)
@given(st.lists(entries, min_size=1, max_size=12))
def test_bad_task_messages_end_recorded_never_stuck(redis_url, items):
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    ids = [_write(r, n, *item) for n, item in enumerate(items)]
    _, state = asyncio.run(_run(redis_url, len(ids)))
    assert state["alive"], "the processor loop died"
    assert state["in_flight"] == 0 and all(v == 0 for v in state["per_queue"].values()), state
    assert r.llen(keys.pending(QUEUE)) == 0
    assert r.llen(keys.active(QUEUE)) == 0, r.lrange(keys.active(QUEUE), 0, -1)
    assert r.zcard(keys.lease(QUEUE)) == 0
    finished = set()
    for zset in (keys.completed(QUEUE), keys.retry(QUEUE), keys.archived(QUEUE)):
        finished |= {m.decode() for m in r.zrange(zset, 0, -1)}
    for task_id, (kind, _, _) in zip(ids, items, strict=True):
        fields = r.hgetall(keys.task_key(QUEUE, task_id))
        if kind in ("missing_hash", "no_msg_field"):
            assert task_id not in finished  # dropped as an orphan, reported in the log
            continue
        if not fields:
            continue  # completed without retention: deleted, as asynq does
        assert task_id in finished, (kind, fields.get(b"state"))
        if task_id in finished and fields.get(b"state") == b"archived":
            assert r.zscore(keys.archived(QUEUE), task_id) is not None
    r.close()

"""The 25 conformance scenarios of the asynq wire spec (§8), against a real redis-server.

Each test asserts the whole resulting key state (no other ``asynq:*`` key may exist
unless the scenario says so). Scenarios that involve a Go peer are checked here on the
Redis state the Go code reads or writes, built byte for byte as Go builds it.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis

from agent.broker import Broker, DuplicateTaskError, TaskIDConflictError, keys
from agent.broker.messages import ServerInfo, TaskMessage, WorkerInfo, decode_task_message, encode
from agent.broker.options import EnqueueOptions
from agent.broker.plans import LEASE_EXPIRED_ERROR, processing_deadline
from agent.broker.priority import QueueOrder
from tests.keystate import key_state

NINETY_DAYS = 90 * 24 * 3600
Q = "default"


@pytest.fixture
async def broker(redis_url):
    b = Broker(aioredis.Redis.from_url(redis_url))
    yield b
    await b.close()


def today() -> str:
    return keys.utc_date()


def msg_of(state: dict, task_id: str, q: str = Q) -> TaskMessage:
    return decode_task_message(state[f"asynq:{{{q}}}:t:{task_id}"]["msg"])


async def take(broker: Broker, q: str = Q):
    tasks, orphans = await broker.dequeue(q)
    assert len(tasks) == 1 and not orphans
    return tasks[0]


def assert_daily_ttl(r, key: str) -> None:
    ttl = r.ttl(key)
    assert NINETY_DAYS - 5 <= ttl <= NINETY_DAYS, (key, ttl)


# 1
async def test_01_enqueue(broker, r):
    before_ns = time.time_ns()
    await broker.enqueue("t", b"p", task_id="A")
    after_ns = time.time_ns()
    state = key_state(r)
    assert set(state) == {"asynq:queues", "asynq:{default}:pending", "asynq:{default}:t:A"}
    assert state["asynq:queues"] == {"default"}
    assert state["asynq:{default}:pending"] == ["A"]
    h = state["asynq:{default}:t:A"]
    assert set(h) == {"msg", "state", "pending_since"}
    assert h["state"] == b"pending"
    assert before_ns - 1_000 <= int(h["pending_since"]) <= after_ns
    m = msg_of(state, "A")
    assert (m.type, m.payload, m.id, m.queue, m.retry, m.timeout, m.deadline) == (
        "t", b"p", "A", "default", 25, 1800, 0)
    for key in state:
        assert r.ttl(key) == -1


# 2
@pytest.mark.parametrize("fate", ["pending", "completed", "archived"])
async def test_02_id_conflict(broker, r, fate):
    await broker.enqueue("t", b"p", task_id="A", retention=3600, max_retry=0)
    if fate != "pending":
        task = await take(broker)
        if fate == "completed":
            await broker.complete(task)
        else:
            await broker.fail(task, "boom")
    before = key_state(r)
    with pytest.raises(TaskIDConflictError, match="conflicts"):
        await broker.enqueue("t", b"other", task_id="A")
    assert key_state(r) == before
    assert before["asynq:{default}:t:A"]["state"] == fate.encode()


def go_enqueue(r, msg: TaskMessage) -> None:
    """Write a task exactly as asynq.Client's enqueueCmd does."""
    r.sadd("asynq:queues", msg.queue)
    r.hset(keys.task_key(msg.queue, msg.id),
           mapping={"msg": encode(msg), "state": "pending", "pending_since": time.time_ns()})
    r.lpush(keys.pending(msg.queue), msg.id)


# 3
async def test_03_go_client_to_python_worker(broker, r):
    m = TaskMessage(type="email:send", payload=b"{}", id="go-1", queue=Q, retry=3, timeout=10)
    m.headers["k"] = "v"
    go_enqueue(r, m)
    now = int(time.time())
    task = await take(broker)
    assert (task.message.retry, task.message.timeout, dict(task.message.headers)) == (3, 10, {"k": "v"})
    state = key_state(r)
    assert state["asynq:{default}:active"] == ["go-1"]
    score = state["asynq:{default}:lease"]["go-1"]
    assert score == int(score) and now < score <= now + 31
    h = state["asynq:{default}:t:go-1"]
    assert h["state"] == b"active" and "pending_since" not in h
    assert "asynq:{default}:pending" not in state


# 4
async def test_04_done(broker, r):
    await broker.enqueue("t", b"p", task_id="A")
    await broker.complete(await take(broker))
    state = key_state(r)
    day = f"asynq:{{default}}:processed:{today()}"
    assert state == {"asynq:queues": {"default"}, "asynq:{default}:processed": b"1", day: b"1"}
    assert_daily_ttl(r, day)


# 5
async def test_05_retention_completed(broker, r):
    await broker.enqueue("t", b"p", task_id="A", retention=3600)
    task = await take(broker)
    now = int(time.time())
    await broker.complete(task, result=b'{"ok":true}')
    state = key_state(r)
    day = f"asynq:{{default}}:processed:{today()}"
    assert set(state) == {"asynq:queues", "asynq:{default}:completed", "asynq:{default}:t:A",
                          "asynq:{default}:processed", day}
    assert now + 3600 <= state["asynq:{default}:completed"]["A"] <= now + 3601
    h = state["asynq:{default}:t:A"]
    assert set(h) == {"msg", "state", "result"}
    assert h["state"] == b"completed" and h["result"] == b'{"ok":true}'
    assert now <= msg_of(state, "A").completed_at <= now + 1
    assert state["asynq:{default}:processed"] == b"1" and state[day] == b"1"


# 6
async def test_06_janitor(broker, r):
    now = int(time.time())
    for tid, score in (("old", now - 1), ("new", now + 100)):
        r.hset(keys.task_key(Q, tid), mapping={"msg": encode(TaskMessage(id=tid, queue=Q, type="t")),
                                               "state": "completed"})
        r.zadd(keys.completed(Q), {tid: score})
    assert await broker.delete_expired_completed(Q) == 1
    state = key_state(r)
    assert set(state) == {"asynq:{default}:completed", "asynq:{default}:t:new"}
    assert state["asynq:{default}:completed"] == {"new": now + 100}


def failure_state_keys(container: str) -> set[str]:
    return {"asynq:queues", f"asynq:{{default}}:{container}", "asynq:{default}:t:A",
            "asynq:{default}:processed", "asynq:{default}:failed",
            f"asynq:{{default}}:processed:{today()}", f"asynq:{{default}}:failed:{today()}"}


# 7
async def test_07_retry_failure(broker, r):
    await broker.enqueue("t", b"p", task_id="A")
    task = await take(broker)
    now = int(time.time())
    assert await broker.fail(task, "boom") == "retry"
    state = key_state(r)
    assert set(state) == failure_state_keys("retry")
    assert now + 15 <= state["asynq:{default}:retry"]["A"] <= now + 45
    m = msg_of(state, "A")
    assert (m.retried, m.error_msg) == (1, "boom") and now <= m.last_failed_at <= now + 1
    assert state["asynq:{default}:t:A"]["state"] == b"retry"
    for k in ("processed", "failed", f"processed:{today()}", f"failed:{today()}"):
        assert state[f"asynq:{{default}}:{k}"] == b"1"
    assert_daily_ttl(r, f"asynq:{{default}}:failed:{today()}")


# 8
async def test_08_retry_not_failure(broker, r):
    await broker.enqueue("t", b"p", task_id="A")
    task = await take(broker)
    await broker.retry(task, "not a failure", time.time() + 60, is_failure=False)
    state = key_state(r)
    assert set(state) == {"asynq:queues", "asynq:{default}:retry", "asynq:{default}:t:A"}
    m = msg_of(state, "A")
    assert m.retried == 0 and m.error_msg == "not a failure" and m.last_failed_at > 0


# 9
@pytest.mark.parametrize("case", ["retry0", "exhausted", "skip_retry"])
async def test_09_archive(broker, r, case):
    await broker.enqueue("t", b"p", task_id="A", max_retry=0 if case == "retry0" else 2)
    task = await take(broker)
    if case == "exhausted":
        task.message.retried = 2
    now = int(time.time())
    assert await broker.fail(task, "fatal", skip_retry=case == "skip_retry") == "archived"
    state = key_state(r)
    assert set(state) == failure_state_keys("archived")
    assert now <= state["asynq:{default}:archived"]["A"] <= now + 1
    m = msg_of(state, "A")
    assert m.error_msg == "fatal" and m.last_failed_at >= now
    assert m.retried == (2 if case == "exhausted" else 0)
    assert state["asynq:{default}:processed"] == state["asynq:{default}:failed"] == b"1"


# 10
async def test_10_archive_trimming(broker, r):
    now = int(time.time())
    pipe = r.pipeline(transaction=False)
    for i in range(10_000):
        tid = f"old{i}"
        pipe.hset(keys.task_key(Q, tid), mapping={"msg": b"x", "state": "archived"})
        pipe.zadd(keys.archived(Q), {tid: now - 1000 + (i // 100)})
    # one far older than 90 days: deleted by age
    pipe.hset(keys.task_key(Q, "ancient"), mapping={"msg": b"x", "state": "archived"})
    pipe.zadd(keys.archived(Q), {"ancient": now - NINETY_DAYS - 10})
    pipe.execute()
    await broker.enqueue("t", b"p", task_id="A", max_retry=0)
    await broker.fail(await take(broker), "fatal")
    assert r.zcard(keys.archived(Q)) == 9_999
    assert not r.exists(keys.task_key(Q, "ancient"))
    assert r.zscore(keys.archived(Q), "A") is not None
    assert not r.exists(keys.task_key(Q, "old0")) and not r.exists(keys.task_key(Q, "old1"))
    assert r.exists(keys.task_key(Q, "old9999"))
    hashes = sum(1 for _ in r.scan_iter(match="asynq:{default}:t:*", count=5000))
    assert hashes == 9_999


# 11
async def test_11_forwarder(broker, r):
    now = int(time.time())
    for tid, container, score in (("S", "scheduled", now - 1), ("R", "retry", now - 1),
                                  ("F", "scheduled", now + 100)):
        r.hset(keys.task_key(Q, tid), mapping={"msg": encode(TaskMessage(id=tid, queue=Q, type="t")),
                                               "state": container})
        r.zadd(f"asynq:{{default}}:{container}", {tid: score})
    before_ns = time.time_ns()
    assert await broker.forward(Q) == 2
    state = key_state(r)
    assert state["asynq:{default}:pending"] == ["R", "S"]
    for tid in ("R", "S"):
        h = state[f"asynq:{{default}}:t:{tid}"]
        assert h["state"] == b"pending" and int(h["pending_since"]) >= before_ns - 1_000_000_000
    assert "asynq:{default}:retry" not in state
    assert state["asynq:{default}:scheduled"] == {"F": now + 100}


# 12
async def test_12_process_in(broker, r):
    now = time.time()
    res = await broker.enqueue("t", b"p", task_id="A", process_in=90)
    state = key_state(r)
    assert set(state) == {"asynq:queues", "asynq:{default}:scheduled", "asynq:{default}:t:A"}
    score = state["asynq:{default}:scheduled"]["A"]
    assert score == int(score) == res.process_at and int(now) + 89 <= score <= int(now) + 91
    assert set(state["asynq:{default}:t:A"]) == {"msg", "state"}
    assert r.zrange(keys.scheduled(Q), 0, -1, withscores=True, score_cast_func=bytes)[0][1] == str(int(score)).encode()


# 13
@pytest.mark.parametrize("outcome", ["done", "archive"])
async def test_13_unique(broker, r, outcome):
    import hashlib

    await broker.enqueue("t", b"p", task_id="A", unique_ttl=3600, max_retry=0)
    lock = f"asynq:{{default}}:unique:t:{hashlib.md5(b'p').hexdigest()}"
    assert r.get(lock) == b"A" and 3595 <= r.ttl(lock) <= 3600
    assert r.hget(keys.task_key(Q, "A"), "unique_key") == lock.encode()
    with pytest.raises(DuplicateTaskError):
        await broker.enqueue("t", b"p", task_id="B", unique_ttl=3600)
    task = await take(broker)
    if outcome == "done":
        await broker.complete(task)
        assert not r.exists(lock)
    else:
        await broker.fail(task, "x")
        assert r.get(lock) == b"A"
    # Go's nil payload gives an empty suffix
    assert keys.unique_key(Q, "t", None) == "asynq:{default}:unique:t:"
    assert keys.unique_key(Q, "t", b"").endswith(":d41d8cd98f00b204e9800998ecf8427e")


# 14
async def test_14_paused(broker, r):
    await broker.enqueue("t", b"p", task_id="A")
    assert await broker.pause(Q)
    assert not await broker.pause(Q)  # SETNX: already paused
    assert await broker.dequeue(Q) == ([], [])
    assert r.lrange(keys.pending(Q), 0, -1) == [b"A"]
    await broker.unpause(Q)
    assert (await take(broker)).id == "A"


# 15
async def test_15_priority(broker, r):
    weights = {"critical": 6, "default": 3, "low": 1}
    order = QueueOrder(weights, rng=random.Random(7))
    firsts = Counter(order.order()[0] for _ in range(10_000))
    for q, share in (("critical", 0.6), ("default", 0.3), ("low", 0.1)):
        assert abs(firsts[q] / 10_000 - share) < 0.02, firsts
    # real dequeues over full queues
    for q in weights:
        await broker.enqueue_many([("t", b"", EnqueueOptions(queue=q)) for _ in range(1_000)])
    got = Counter()
    for _ in range(1_000):
        tasks, _ = await broker.dequeue_first(order.order())
        got[tasks[0].queue] += 1
    assert abs(got["critical"] / 1000 - 0.6) < 0.06 and abs(got["low"] / 1000 - 0.1) < 0.04, got
    strict = QueueOrder(weights, strict=True)
    assert strict.order() == ["critical", "default", "low"]
    r.delete(keys.pending("critical"), keys.pending("default"))
    tasks, _ = await broker.dequeue_first(strict.order())
    assert tasks[0].queue == "low"


# 16
async def test_16_lease_renewal(broker, r):
    await broker.enqueue("t", b"p", task_id="A")
    task = await take(broker)
    r.zadd(keys.lease(Q), {"A": int(time.time()) + 2})
    expiry = await broker.extend_leases(Q, ["A", "ghost"])
    assert r.zscore(keys.lease(Q), "A") == expiry >= int(time.time()) + 29
    assert r.zscore(keys.lease(Q), "ghost") is None  # XX never adds
    assert task.lease_valid()


# 17
async def test_17_lease_recovery(broker, r):
    await broker.enqueue("t", b"p", task_id="A")
    await broker.enqueue("t", b"p", task_id="B", max_retry=0)
    await broker.dequeue(Q, count=2)
    stale = int(time.time()) - 31
    r.zadd(keys.lease(Q), {"A": stale, "B": stale})
    counts = await broker.recover_expired(Q)
    assert counts == {"retry": 1, "archived": 1, "orphans": 0}
    state = key_state(r)
    a, b = msg_of(state, "A"), msg_of(state, "B")
    assert a.error_msg == LEASE_EXPIRED_ERROR and a.retried == 1
    assert "A" in state["asynq:{default}:retry"] and "B" in state["asynq:{default}:archived"]
    assert b.retried == 0 and b.error_msg == LEASE_EXPIRED_ERROR
    assert "asynq:{default}:active" not in state and "asynq:{default}:lease" not in state
    assert state["asynq:{default}:processed"] == b"2" and state["asynq:{default}:failed"] == b"2"


# 18
async def test_18_requeue(broker, r):
    await broker.enqueue("t", b"p", task_id="A")
    await broker.enqueue("t", b"p", task_id="B")
    task = await take(broker)
    assert task.id == "A"
    await broker.requeue(task)
    state = key_state(r)
    assert state["asynq:{default}:pending"] == ["B", "A"]  # A at the right end: next out
    assert state["asynq:{default}:t:A"]["state"] == b"pending"
    assert "pending_since" not in state["asynq:{default}:t:A"]
    assert msg_of(state, "A").retried == 0
    assert "asynq:{default}:active" not in state and "asynq:{default}:lease" not in state
    assert (await take(broker)).id == "A"


# 19
async def test_19_heartbeat(broker, r):
    now = int(time.time())
    info = ServerInfo(host="h", pid=42, server_id="sid", concurrency=10, status="active",
                      active_worker_count=1)
    info.queues["default"] = 1
    info.start_time.seconds = now
    worker = WorkerInfo(host="h", pid=42, server_id="sid", task_id="t1", task_type="t", queue=Q)
    await broker.write_server_state(info, [worker])
    state = key_state(r)
    skey, wkey = "asynq:servers:{h:42:sid}", "asynq:workers:{h:42:sid}"
    assert now < state["asynq:servers"][skey] <= now + 11
    assert now < state["asynq:workers"][wkey] <= now + 11
    decoded = ServerInfo()
    decoded.ParseFromString(state[skey])
    assert (decoded.status, decoded.concurrency, decoded.active_worker_count) == ("active", 10, 1)
    assert 0 < r.ttl(skey) <= 10 and 0 < r.ttl(wkey) <= 10
    w = WorkerInfo()
    w.ParseFromString(state[wkey]["t1"])
    assert w.server_id == decoded.server_id
    await broker.clear_server_state("h", 42, "sid")
    assert key_state(r) == {}


# 20
async def test_20_stats(broker, r):
    for i in range(4):
        await broker.enqueue("t", b"p", task_id=f"T{i}", max_retry=0)
    for _ in range(3):
        await broker.complete(await take(broker))
    await broker.fail(await take(broker), "x")
    assert r.get(keys.processed_total(Q)) == b"4" and r.get(keys.failed_total(Q)) == b"1"
    assert r.get(keys.processed_day(Q)) == b"4" and r.get(keys.failed_day(Q)) == b"1"


# 21 (delivery of asynq:cancel is exercised end to end in the runtime tests)
async def test_21_cancelled_task_is_a_normal_failure(broker, r):
    await broker.enqueue("t", b"p", task_id="A")
    assert await broker.fail(await take(broker), "context canceled") == "retry"
    m = msg_of(key_state(r), "A")
    assert (m.retried, m.error_msg) == (1, "context canceled")


# 22
async def test_22_result(broker, r):
    await broker.enqueue("t", b"p", task_id="A", retention=60)
    task = await take(broker)
    assert await broker.write_result(task, b"x") == 1
    assert r.hget(keys.task_key(Q, "A"), "result") == b"x"
    await broker.complete(task)
    info = await broker.get_task(Q, "A")
    assert info.state == "completed" and info.result == b"x"


# 23
async def test_23_headers_and_deadline_for_go_server(broker, r):
    deadline = int(time.time()) + 120
    await broker.enqueue("t", b"p", task_id="A", deadline=deadline, timeout=600, headers={"trace": "1"})
    m = msg_of(key_state(r), "A")
    assert (m.timeout, m.deadline, dict(m.headers)) == (600, deadline, {"trace": "1"})
    now = time.time()
    assert processing_deadline(m, now) == min(int(now) + 600, deadline)
    m2 = decode_task_message(encode(TaskMessage(type="t", deadline=deadline)))
    assert processing_deadline(m2, now) == deadline
    assert processing_deadline(TaskMessage(type="t"), now) == int(now) + 1800


# 24
async def test_24_group(broker, r):
    for i in range(3):
        await broker.enqueue("t", f"{i}".encode(), task_id=f"G{i}", group="g")
    state = key_state(r)
    assert set(state) == {"asynq:queues", "asynq:{default}:g:g", "asynq:{default}:groups",
                          *(f"asynq:{{default}}:t:G{i}" for i in range(3))}
    assert all(s == int(s) for s in state["asynq:{default}:g:g"].values())
    assert state["asynq:{default}:groups"] == {"g"}
    h = state["asynq:{default}:t:G0"]
    assert set(h) == {"msg", "state", "group"} and h["state"] == b"aggregating" and h["group"] == b"g"
    assert msg_of(state, "G0").group_key == "g"


# 25
@pytest.mark.parametrize("error", [b"bad \xff\xfe bytes", "truncated \u00e9".encode()[:-1],
                                   "lone \ud800 surrogate"])
async def test_25_utf8_sanitised(broker, r, error):
    await broker.enqueue("t", b"p", task_id="A")
    await broker.fail(await take(broker), error.decode("utf-8", "surrogateescape")
                      if isinstance(error, bytes) else error)
    m = decode_task_message(r.hget(keys.task_key(Q, "A"), "msg"))  # strict UTF-8 check
    assert "\ufffd" in m.error_msg

"""The Inspector against a real redis-server filled by the wire layer (and by hand, byte for
byte, the way Go asynq writes). Each action's resulting key state is checked against what
asynq's Inspector scripts leave (wire spec §4.2)."""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio as aioredis

from agent.broker import Broker, QueueNotFoundError, TaskNotFoundError, keys
from agent.broker.messages import ServerInfo, WorkerInfo, decode_task_message, encode
from agent.inspect import Inspector, InspectorError
from tests.keystate import key_state

Q = "default"
# wire spec §2.4 golden vectors, as Go's protobuf encodes them
GO_TASK = bytes.fromhex(
    "0a01781a0274322201714880e2cfaa0652136173796e713a7b717d3a756e697175653a783a"
    "60901c6880e2cfaa067201677a060a016b120176")
GO_SERVER = bytes.fromhex(
    "0a0168102a1a03736964200a2a0b0a0764656661756c7410013a0661637469766542060880e2cfaa064801")
GO_WORKER = bytes.fromhex(
    "0a0168102a1a03736964220274312a0a656d61696c3a73656e6432027b7d3a0764656661756c74"
    "42060880e2cfaa064a060888f0cfaa06")


async def seed(url: str) -> None:
    """One task in every state of queue 'default', plus a paused queue 'low'.

    default: active a1; retry r1 (failed once); archived x1 (max_retry 0, binary payload);
    completed c1 (retention 1 h, with a result); pending p1, p2 (unique); scheduled s1
    (in 1 h), s2 (unique); aggregating g1, g2 in group 'batch'. low: pending l1, paused.
    """
    b = Broker(aioredis.Redis.from_url(url))
    try:
        await b.enqueue("email:send", b'{"to":"ann"}', task_id="a1")
        await b.dequeue(Q)
        await b.enqueue("email:send", b'{"to":"bob"}', task_id="r1")
        (task,), _ = await b.dequeue(Q)
        assert await b.fail(task, "smtp: refused") == "retry"
        await b.enqueue("image:resize", b"\x89PNG\x00\xff", task_id="x1", max_retry=0)
        (task,), _ = await b.dequeue(Q)
        assert await b.fail(task, "bad image") == "archived"
        await b.enqueue("report:build", b'{"m":5}', task_id="c1", retention=3600)
        (task,), _ = await b.dequeue(Q)
        await b.complete(task, b'{"rows":42}')
        await b.enqueue("email:send", b'{"to":"cy"}', task_id="p1")
        await b.enqueue("email:digest", b"weekly", task_id="p2", unique_ttl=3600)
        await b.enqueue("email:send", b'{"to":"dee"}', task_id="s1", process_in=3600)
        await b.enqueue("email:later", b"x", task_id="s2", process_in=3600, unique_ttl=60)
        await b.enqueue("metrics:flush", b"1", task_id="g1", group="batch")
        await b.enqueue("metrics:flush", b"2", task_id="g2", group="batch")
        await b.enqueue("cleanup", None, queue="low", task_id="l1")
        await b.pause("low")
    finally:
        await b.close()


@pytest.fixture
async def filled(redis_url, r):
    await seed(redis_url)
    return r


@pytest.fixture
def inspector(redis_url):
    with Inspector.from_url(redis_url) as inspector:
        yield inspector


def members(r: redis.Redis, key: str) -> list[str]:
    kind = r.type(key).decode()
    if kind == "list":
        return [m.decode() for m in r.lrange(key, 0, -1)]
    if kind == "zset":
        return [m.decode() for m in r.zrange(key, 0, -1)]
    if kind == "set":
        return sorted(m.decode() for m in r.smembers(key))
    assert kind == "none", (key, kind)
    return []


def hash_state(r: redis.Redis, task_id: str, q: str = Q) -> str | None:
    value = r.hget(keys.task_key(q, task_id), "state")
    return value.decode() if value else None


# -- stats ------------------------------------------------------------------------------


async def test_queue_stats_counts_counters_and_latency(filled, inspector):
    r = filled
    assert inspector.queues() == ["default", "low"]
    now = time.time()
    # p1 is the oldest pending task (the right end): make it 5 s old.
    r.hset(keys.task_key(Q, "p1"), "pending_since", int((now - 5) * 1e9))
    s = inspector.queue_stats(Q, now=now)
    assert (s.pending, s.active, s.scheduled, s.retry, s.archived, s.completed, s.aggregating) == (
        2, 1, 2, 1, 1, 1, 2)
    assert s.size == 10 and s.groups == 1 and not s.paused
    # processed counts successes and failures: r1 retry, x1 archive, c1 complete
    assert (s.processed, s.failed, s.processed_total, s.failed_total) == (3, 2, 3, 2)
    assert 4.9 < s.latency < 5.1
    assert s.memory_usage and s.memory_usage > 0
    assert s.date == keys.utc_date(now)
    low = inspector.queue_stats("low", memory=False)
    assert low.paused and low.pending == 1 and low.memory_usage is None
    assert low.processed == low.failed == low.processed_total == 0


async def test_latency_is_zero_without_pending_since_and_unknown_queue_is_not_found(filled, inspector):
    r = filled
    r.hdel(keys.task_key(Q, "p1"), "pending_since")  # as after Requeue or RunTask
    assert inspector.queue_stats(Q).latency == 0
    r.lpush(keys.pending("ghost"), "z")  # keys exist, but the queue is not in asynq:queues
    for call in (lambda: inspector.queue_stats("ghost"), lambda: inspector.history("ghost"),
                 lambda: inspector.list_tasks("ghost", "pending"),
                 lambda: inspector.get_task("ghost", "z"),
                 lambda: inspector.delete_task("ghost", "z"),
                 lambda: inspector.run_all("ghost", "retry")):
        with pytest.raises(QueueNotFoundError, match="'ghost' not found"):
            call()


def test_history_reads_daily_keys_today_first(r, inspector):
    r.sadd(keys.ALL_QUEUES, Q)
    now = time.time()
    r.set(keys.processed_day(Q, now), 7)
    r.set(keys.failed_day(Q, now), 2)
    r.set(keys.processed_day(Q, now - 86400), 4)
    days = inspector.history(Q, 3, now=now)
    assert [(d.date, d.processed, d.failed) for d in days] == [
        (keys.utc_date(now), 7, 2), (keys.utc_date(now - 86400), 4, 0),
        (keys.utc_date(now - 2 * 86400), 0, 0)]
    with pytest.raises(InspectorError, match="positive"):
        inspector.history(Q, 0)


# -- listing ----------------------------------------------------------------------------


async def test_pending_list_is_oldest_first_and_paginated(redis_url, r, inspector):
    b = Broker(aioredis.Redis.from_url(redis_url))
    for i in range(5):
        await b.enqueue("t", f"{i}".encode(), task_id=f"t{i}")
    await b.close()
    pages = [inspector.list_tasks(Q, "pending", page, 2) for page in (1, 2, 3, 4)]
    assert [[t.id for t in p.tasks] for p in pages] == [["t0", "t1"], ["t2", "t3"], ["t4"], []]
    assert {p.total for p in pages} == {5}
    first = pages[0].tasks[0]
    assert (first.type, first.payload, first.state, first.max_retry) == ("t", b"0", "pending", 25)
    assert first.pending_since_ns and first.next_process_at > 0
    r.rpush(keys.pending(Q), "t4")  # a requeued ID sits at the right end: it runs next
    assert inspector.list_tasks(Q, "pending", 1, 1).tasks[0].id == "t4"


async def test_every_state_lists_its_fields(filled, inspector):
    r = filled
    now = time.time()

    def one(state: str, **kw):
        page = inspector.list_tasks(Q, state, now=now, **kw)
        return {t.id: t for t in page.tasks}

    active = one("active")["a1"]
    assert active.lease_expiry and active.lease_expiry > now and not active.is_orphaned
    r.zadd(keys.lease(Q), {"a1": int(now) - 1})
    assert one("active")["a1"].is_orphaned

    retry = one("retry")["r1"]
    assert (retry.retried, retry.max_retry, retry.last_error) == (1, 25, "smtp: refused")
    assert retry.next_process_at == retry.score == int(r.zscore(keys.retry(Q), "r1"))
    assert retry.last_failed_at >= int(now) - 5

    archived = one("archived")["x1"]
    assert archived.payload == b"\x89PNG\x00\xff" and archived.last_error == "bad image"
    assert archived.score == int(r.zscore(keys.archived(Q), "x1")) and archived.next_process_at == 0

    completed = one("completed")["c1"]
    assert completed.result == b'{"rows":42}' and completed.retention == 3600
    assert completed.score == completed.completed_at + 3600

    scheduled = one("scheduled")
    assert list(scheduled) == ["s1", "s2"] or list(scheduled) == ["s2", "s1"]
    assert scheduled["s2"].unique_key == keys.unique_key(Q, "email:later", b"x")
    assert scheduled["s1"].next_process_at >= int(now) + 3598

    grouped = one("aggregating", group="batch")
    assert set(grouped) == {"g1", "g2"} and grouped["g1"].group == "batch"
    with pytest.raises(InspectorError, match="needs a group"):
        inspector.list_tasks(Q, "aggregating")
    with pytest.raises(InspectorError, match="unknown state"):
        inspector.list_tasks(Q, "running")


async def test_get_task_in_every_state(filled, inspector):
    now = time.time()
    states = {tid: inspector.get_task(Q, tid, now=now) for tid in
              ("a1", "r1", "x1", "c1", "p1", "s1", "g1")}
    assert {tid: t.state for tid, t in states.items()} == {
        "a1": "active", "r1": "retry", "x1": "archived", "c1": "completed", "p1": "pending",
        "s1": "scheduled", "g1": "aggregating"}
    assert states["p1"].next_process_at == int(now)
    assert states["s1"].next_process_at == int(filled.zscore(keys.scheduled(Q), "s1"))
    assert states["a1"].lease_expiry and states["a1"].next_process_at == 0
    assert states["c1"].result == b'{"rows":42}'
    assert states["g1"].group == "batch"
    with pytest.raises(TaskNotFoundError):
        inspector.get_task(Q, "nope")


def test_go_written_task_with_headers_is_listed(r, inspector):
    """TaskMessage bytes exactly as Go's protobuf writes them (spec §2.4 golden vector)."""
    r.sadd(keys.ALL_QUEUES, "q")
    r.hset(keys.task_key("q", "t2"), mapping={"msg": GO_TASK, "state": "pending",
                                              "pending_since": time.time_ns()})
    r.lpush(keys.pending("q"), "t2")
    (task,) = inspector.list_tasks("q", "pending").tasks
    assert task.decodable
    assert (task.id, task.type, task.queue, task.payload) == ("t2", "x", "q", b"")
    assert task.headers == {"k": "v"}
    assert (task.group, task.unique_key, task.retention, task.deadline, task.completed_at) == (
        "g", "asynq:{q}:unique:x:", 3600, 1700000000, 1700000000)
    assert inspector.get_task("q", "t2").headers == {"k": "v"}


async def test_corrupt_msg_does_not_break_listing(filled, inspector):
    r = filled
    # invalid protobuf, a hash with no msg, and an ID whose hash is gone
    r.hset(keys.task_key(Q, "bad"), mapping={"msg": b"\xff\xff\xff garbage", "state": "pending"})
    r.hset(keys.task_key(Q, "nomsg"), "state", "pending")
    r.lpush(keys.pending(Q), "bad", "nomsg", "gone")
    r.hset(keys.task_key(Q, "badr"), mapping={"msg": b"\x0a\x05ab", "state": "retry"})
    r.zadd(keys.retry(Q), {"badr": 1.5})  # a float score, as py-asynq writes
    page = inspector.list_tasks(Q, "pending")
    by_id = {t.id: t for t in page.tasks}
    assert page.total == 5 and set(by_id) == {"p1", "p2", "bad", "nomsg", "gone"}
    assert by_id["p1"].decodable and by_id["p1"].type == "email:send"
    for tid in ("bad", "nomsg", "gone"):
        assert not by_id[tid].decodable and by_id[tid].decode_error
    retry = {t.id: t for t in inspector.list_tasks(Q, "retry").tasks}
    assert not retry["badr"].decodable and retry["badr"].score == 1
    assert retry["r1"].decodable
    shown = inspector.get_task(Q, "bad")
    assert shown.state == "pending" and "undecodable" in shown.decode_error


# -- single-task actions ----------------------------------------------------------------


async def test_retry_task_moves_to_pending_keeping_retries(filled, inspector):
    r = filled
    before = r.hgetall(keys.task_key(Q, "r1"))
    inspector.retry_task(Q, "r1")
    assert members(r, keys.retry(Q)) == []
    assert members(r, keys.pending(Q))[0] == "r1"  # LPUSH: left end, after p1 and p2
    after = r.hgetall(keys.task_key(Q, "r1"))
    assert after == {**before, b"state": b"pending"}  # msg untouched, no pending_since
    msg = decode_task_message(after[b"msg"])
    assert (msg.retried, msg.error_msg) == (1, "smtp: refused")

    inspector.retry_task(Q, "x1")
    inspector.retry_task(Q, "c1")
    assert members(r, keys.archived(Q)) == members(r, keys.completed(Q)) == []
    inspector.retry_task(Q, "g1")
    assert members(r, keys.group(Q, "batch")) == ["g2"] and members(r, keys.groups(Q)) == ["batch"]
    inspector.retry_task(Q, "g2")  # the group is now empty: removed from groups
    assert r.exists(keys.group(Q, "batch"), keys.groups(Q)) == 0
    assert members(r, keys.pending(Q)) == ["g2", "g1", "c1", "x1", "r1", "p2", "p1"]
    assert {hash_state(r, t) for t in ("g1", "g2", "c1", "x1")} == {"pending"}

    with pytest.raises(InspectorError, match="already running"):
        inspector.retry_task(Q, "a1")
    with pytest.raises(InspectorError, match="already pending"):
        inspector.retry_task(Q, "p1")
    with pytest.raises(TaskNotFoundError):
        inspector.retry_task(Q, "nope")


async def test_archive_task_from_pending_scheduled_and_group(filled, inspector):
    r = filled
    now = int(time.time())
    msg_before = r.hget(keys.task_key(Q, "p1"), "msg")
    inspector.archive_task(Q, "p1", now=now)
    inspector.archive_task(Q, "s1", now=now)
    inspector.archive_task(Q, "g1", now=now)
    assert members(r, keys.pending(Q)) == ["p2"]
    assert members(r, keys.scheduled(Q)) == ["s2"]
    assert members(r, keys.group(Q, "batch")) == ["g2"]
    archived = dict(r.zrange(keys.archived(Q), 0, -1, withscores=True))
    assert {k.decode(): int(v) for k, v in archived.items() if k != b"x1"} == {
        "p1": now, "s1": now, "g1": now}
    assert hash_state(r, "p1") == "archived"
    assert r.hget(keys.task_key(Q, "p1"), "msg") == msg_before  # asynq keeps msg as is
    with pytest.raises(InspectorError, match="already archived"):
        inspector.archive_task(Q, "x1")
    with pytest.raises(InspectorError, match="active"):
        inspector.archive_task(Q, "a1")
    with pytest.raises(TaskNotFoundError):
        inspector.archive_task(Q, "nope")


def test_archive_trims_by_age_and_size_like_asynq(r, inspector):
    r.sadd(keys.ALL_QUEUES, Q)
    now = int(time.time())
    old = now - 91 * 86400
    # 10 000 archived IDs, the first one older than 90 days; hashes only for the two oldest
    r.zadd(keys.archived(Q), {f"z{i:05d}": (old if i == 0 else now - 10_000 + i) for i in range(10_000)})
    for tid in ("z00000", "z00001"):
        r.hset(keys.task_key(Q, tid), mapping={"msg": b"", "state": "archived"})
    r.hset(keys.task_key(Q, "new"), mapping={"msg": b"", "state": "scheduled"})
    r.zadd(keys.scheduled(Q), {"new": now + 60})
    inspector.archive_task(Q, "new", now=now)
    assert r.zcard(keys.archived(Q)) == 9_999  # asynq keeps at most 9 999
    assert r.zscore(keys.archived(Q), "z00000") is None  # too old
    assert r.zscore(keys.archived(Q), "z00001") is None  # oldest by rank
    assert r.zscore(keys.archived(Q), "new") == now
    # asynq's Inspector trims members only: the trimmed hashes stay
    assert r.exists(keys.task_key(Q, "z00000"), keys.task_key(Q, "z00001")) == 2


async def test_delete_task_releases_the_unique_lock(filled, inspector):
    r = filled
    lock = keys.unique_key(Q, "email:digest", b"weekly")
    assert r.get(lock) == b"p2"
    inspector.delete_task(Q, "p2")
    assert not r.exists(keys.task_key(Q, "p2"), lock)
    assert members(r, keys.pending(Q)) == ["p1"]

    s2_lock = keys.unique_key(Q, "email:later", b"x")
    r.set(s2_lock, "someone-else")  # a lock now held by another task is left alone
    inspector.delete_task(Q, "s2")
    assert r.get(s2_lock) == b"someone-else" and not r.exists(keys.task_key(Q, "s2"))

    for tid in ("r1", "x1", "c1", "s1", "g1", "g2"):
        inspector.delete_task(Q, tid)
    state = key_state(r, "asynq:{default}:*")
    assert set(state) == {"asynq:{default}:pending", "asynq:{default}:active",
                          "asynq:{default}:lease", "asynq:{default}:t:a1",
                          "asynq:{default}:t:p1", "asynq:{default}:processed",
                          "asynq:{default}:failed", keys.processed_day(Q), keys.failed_day(Q),
                          s2_lock}
    with pytest.raises(InspectorError, match="active"):
        inspector.delete_task(Q, "a1")
    with pytest.raises(TaskNotFoundError):
        inspector.delete_task(Q, "r1")


# -- bulk actions -----------------------------------------------------------------------


async def test_run_all_moves_every_task_to_pending(filled, inspector):
    r = filled
    assert inspector.run_all(Q, "scheduled") == 2
    assert inspector.run_all(Q, "retry") == 1
    assert inspector.run_all(Q, "archived") == 1
    assert inspector.run_all(Q, "aggregating") == 2  # every group
    assert not r.exists(keys.scheduled(Q), keys.retry(Q), keys.archived(Q),
                        keys.group(Q, "batch"), keys.groups(Q))
    pending = members(r, keys.pending(Q))
    assert sorted(pending) == ["g1", "g2", "p1", "p2", "r1", "s1", "s2", "x1"]
    assert pending[-2:] == ["p2", "p1"]  # the older tasks still run first
    assert {hash_state(r, t) for t in pending} == {"pending"}
    assert r.hget(keys.task_key(Q, "s1"), "pending_since") is None  # as asynq's runAllCmd
    assert inspector.run_all(Q, "retry") == 0
    with pytest.raises(InspectorError, match="cannot run all pending"):
        inspector.run_all(Q, "pending")


async def test_archive_all_pending_and_one_group(filled, inspector):
    r = filled
    now = int(time.time())
    assert inspector.archive_all(Q, "pending", now=now) == 2
    assert inspector.archive_all(Q, "aggregating", group="batch", now=now) == 2
    assert inspector.archive_all(Q, "retry", now=now) == 1
    assert not r.exists(keys.pending(Q), keys.group(Q, "batch"), keys.groups(Q), keys.retry(Q))
    archived = {m.decode(): int(s) for m, s in r.zrange(keys.archived(Q), 0, -1, withscores=True)}
    assert set(archived) == {"x1", "p1", "p2", "g1", "g2", "r1"}
    assert {archived[t] for t in ("p1", "p2", "g1", "g2", "r1")} == {now}
    assert {hash_state(r, t) for t in archived} == {"archived"}
    assert r.get(keys.unique_key(Q, "email:digest", b"weekly")) == b"p2"  # lock kept
    with pytest.raises(InspectorError, match="cannot archive all archived"):
        inspector.archive_all(Q, "archived")


async def test_delete_all_releases_locks_only_where_asynq_does(filled, inspector):
    r = filled
    pending_lock = keys.unique_key(Q, "email:digest", b"weekly")
    scheduled_lock = keys.unique_key(Q, "email:later", b"x")
    assert inspector.delete_all(Q, "pending") == 2
    assert r.get(pending_lock) == b"p2"  # deleteAllPendingCmd leaves locks to their TTL
    assert inspector.delete_all(Q, "scheduled") == 2
    assert not r.exists(scheduled_lock)
    for state, n in (("retry", 1), ("archived", 1), ("completed", 1), ("aggregating", 2)):
        assert inspector.delete_all(Q, state) == n
    left = {k for k in key_state(r, "asynq:{default}:*") if ":t:" in k}
    assert left == {"asynq:{default}:t:a1"}
    assert not r.exists(keys.pending(Q), keys.scheduled(Q), keys.retry(Q), keys.archived(Q),
                        keys.completed(Q), keys.group(Q, "batch"), keys.groups(Q))
    with pytest.raises(InspectorError, match="cannot delete all active"):
        inspector.delete_all(Q, "active")


# -- queues, cancel, servers ------------------------------------------------------------


def test_pause_and_unpause(r, inspector):
    before = int(time.time())
    inspector.pause("critical")  # like asynq, pausing does not require a known queue
    assert before <= int(r.get(keys.paused("critical"))) <= before + 2
    with pytest.raises(InspectorError, match="already paused"):
        inspector.pause("critical")
    inspector.unpause("critical")
    assert not r.exists(keys.paused("critical"))
    with pytest.raises(InspectorError, match="not paused"):
        inspector.unpause("critical")


def test_cancel_publishes_the_task_id(r, inspector):
    sub = r.pubsub()
    sub.subscribe(keys.CANCEL_CHANNEL)
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    assert inspector.cancel("a1") == 1
    message = sub.get_message(timeout=2)
    assert message["channel"] == b"asynq:cancel" and message["data"] == b"a1"
    sub.close()


def test_servers_join_workers_and_prune_expired_members(r, inspector):
    now = int(time.time())
    go_server, go_workers = "asynq:servers:{h:42:sid}", "asynq:workers:{h:42:sid}"
    r.set(go_server, GO_SERVER)  # Go's bytes (spec §2.4)
    r.hset(go_workers, "t1", GO_WORKER)
    stray = WorkerInfo(host="h", pid=1, server_id="unknown-server", task_id="t9")
    r.hset(go_workers, "t9", encode(stray))  # a worker whose server is not live: dropped
    r.hset(go_workers, "junk", b"\xff\xff")  # undecodable: skipped
    r.zadd(keys.ALL_SERVERS, {go_server: now + 10, "asynq:servers:{dead:1:x}": now - 5,
                              "asynq:servers:{missing:2:y}": now + 10,
                              "asynq:servers:{garbage:3:z}": now + 10})
    r.set("asynq:servers:{garbage:3:z}", b"\xff\xff\xff")
    r.set("asynq:servers:{dead:1:x}", encode(ServerInfo(host="dead", server_id="x")))
    r.zadd(keys.ALL_WORKERS, {go_workers: now + 10, "h:7": now + 1800})  # runqy-style member
    r.set("h:7", "not a hash")  # WRONGTYPE for HVALS: skipped
    (server,) = inspector.servers()
    assert (server.id, server.host, server.pid, server.concurrency, server.status) == (
        "sid", "h", 42, 10, "active")
    assert server.queues == {"default": 1} and server.active_worker_count == 1
    assert server.started == 1700000000
    (worker,) = server.active_workers
    assert (worker.task_id, worker.task_type, worker.task_payload, worker.queue) == (
        "t1", "email:send", b"{}", "default")
    assert (worker.started, worker.deadline) == (1700000000, 1700001800)
    # the expired member was pruned from the registry, live ones kept
    assert set(members(r, keys.ALL_SERVERS)) == {go_server, "asynq:servers:{missing:2:y}",
                                                 "asynq:servers:{garbage:3:z}"}


async def test_servers_written_by_the_broker_heartbeat(redis_url, inspector):
    b = Broker(aioredis.Redis.from_url(redis_url))
    info = ServerInfo(host="b", pid=2, server_id="s2", concurrency=4, status="active",
                      active_worker_count=0)
    info.queues["critical"] = 6
    info.start_time.seconds = int(time.time())
    await b.write_server_state(info, [])
    other = ServerInfo(host="a", pid=9, server_id="s1", concurrency=1, status="stopped")
    await b.write_server_state(other, [])
    await b.close()
    servers = inspector.servers()
    assert [(s.host, s.pid, s.status, s.queues) for s in servers] == [
        ("a", 9, "stopped", {}), ("b", 2, "active", {"critical": 6})]
    assert servers[0].started is None  # unset Timestamp

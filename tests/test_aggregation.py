"""asynq group aggregation by the agent: asynq's rules (grace period, max delay, max size), the
aggregation_sets recovery, and a real agent aggregating with the built-in JSON list, with the
code's @aggregate, and after being SIGKILLed in the middle of an aggregation.

Groups are written by our client's ``group=``, which writes the keys Go's ``asynq.Group(...)``
writes (addToGroupCmd, spec/asynq-wire.md §4; checked first below).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis.asyncio as aioredis

from agent.broker import keys
from agent.broker.messages import decode_task_message
from agent.client import Client
from agent.config.aggregation import Aggregation
from agent.runtime.aggregator import SET_LEASE, Aggregator
from tests.agentproc import AgentProcess, local_config, wait_until

APPS = Path(__file__).parent / "apps"
Q = "agg"


@pytest.fixture
def client(redis_url):
    with Client(redis_url) as c:
        yield c


@pytest.fixture
async def aredis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def grouped(client, n: int, group: str = "u1", task_type: str = "notify", start: int = 0) -> list:
    return [client.enqueue(task_type, {"text": f"line {i}"}, queue=Q, group=group)
            for i in range(start, start + n)]


def aged(r, infos, group: str = "u1") -> None:
    """Scores are whole seconds (ties go by ID): make the first the oldest, one second apart."""
    now = int(time.time())
    r.zadd(keys.group(Q, group), {info.id: now - len(infos) + i for i, info in enumerate(infos)})


def pending_messages(r) -> list:
    return [decode_task_message(r.hget(keys.task_key(Q, i.decode()), "msg"))
            for i in r.lrange(keys.pending(Q), 0, -1)]


def test_our_group_enqueue_writes_the_keys_go_writes(client, r):
    info = client.enqueue("notify", {"text": "x"}, queue=Q, group="u1")
    assert info.state == "aggregating"
    task = r.hgetall(keys.task_key(Q, info.id))
    assert set(task) == {b"msg", b"state", b"group"}
    assert task[b"state"] == b"aggregating" and task[b"group"] == b"u1"
    assert decode_task_message(task[b"msg"]).group_key == "u1"
    assert r.zrange(keys.group(Q, "u1"), 0, -1, withscores=True)[0][0] == info.id.encode()
    assert r.smembers(keys.groups(Q)) == {b"u1"}
    assert b"agg" in r.smembers("asynq:queues")
    assert not r.exists(keys.pending(Q))


async def test_max_size_takes_the_oldest_and_leaves_the_rest(client, r, aredis):
    infos = grouped(client, 5)
    aged(r, infos)
    aggregator = Aggregator(aredis, {Q: Aggregation(grace_period=60, max_size=3)})
    await aggregator.tick()
    [msg] = pending_messages(r)
    assert msg.type == "notify:aggregated" and msg.queue == Q and msg.retry == 25
    assert msg.timeout == 1800 and msg.retention == 0  # the oldest task's (the defaults)
    assert json.loads(msg.payload) == [{"text": f"line {i}"} for i in range(3)]
    assert r.zcard(keys.group(Q, "u1")) == 2 and r.smembers(keys.groups(Q)) == {b"u1"}
    assert not any(r.exists(keys.task_key(Q, i.id)) for i in infos[:3])  # members deleted
    assert all(r.hget(keys.task_key(Q, i.id), "state") == b"aggregating" for i in infos[3:])
    assert r.zcard(keys.aggregation_sets(Q)) == 0
    assert r.hget(keys.task_key(Q, msg.id), "state") == b"pending"


async def test_grace_period_waits_for_the_newest_task_to_age(client, r, aredis):
    aggregator = Aggregator(aredis, {Q: Aggregation(grace_period=2, aggregate="json_list",
                                                    task_type="digest")})
    grouped(client, 2)
    await aggregator.tick()
    assert not r.exists(keys.pending(Q))  # the newest is younger than the grace period
    time.sleep(1.2)
    grouped(client, 1, start=2)  # a newcomer restarts the grace period
    await aggregator.tick()
    assert not r.exists(keys.pending(Q))
    time.sleep(2.2)
    await aggregator.tick()
    [msg] = pending_messages(r)
    assert msg.type == "digest" and len(json.loads(msg.payload)) == 3
    assert not r.exists(keys.group(Q, "u1")) and not r.smembers(keys.groups(Q))


async def test_max_delay_aggregates_a_group_that_keeps_growing(client, r, aredis):
    infos = grouped(client, 2)
    r.zadd(keys.group(Q, "u1"), {infos[0].id: int(time.time()) - 10})  # the oldest, 10 s old
    aggregator = Aggregator(aredis, {Q: Aggregation(grace_period=60, max_delay=5)})
    await aggregator.tick()
    [msg] = pending_messages(r)
    assert len(json.loads(msg.payload)) == 2


async def test_a_stale_set_is_put_back_and_aggregated_once(client, r, aredis):
    infos = grouped(client, 3, group="g:with:colons")
    aggregator = Aggregator(aredis, {Q: Aggregation(grace_period=60)})
    # a dead aggregator's set (Go's or ours): staged, its deadline passed, never finished
    group_key = keys.group(Q, "g:with:colons")
    stale = f"{group_key}:dead-set"
    await aggregator.scripts["aggregation_check"](
        keys=[group_key, stale, keys.aggregation_sets(Q), keys.groups(Q)],
        args=[0, 0, 0, int(time.time()) - 1, int(time.time()) + 1, "g:with:colons"])
    assert r.zcard(stale) == 3 and not r.exists(group_key) and not r.smembers(keys.groups(Q))
    await aggregator.tick()  # reclaimed into the group, the group listed again (not aggregated: grace)
    assert aggregator.reclaimed == 1 and not r.exists(stale)
    assert r.zcard(group_key) == 3 and r.smembers(keys.groups(Q)) == {b"g:with:colons"}
    assert all(r.hget(keys.task_key(Q, i.id), "state") == b"aggregating" for i in infos)


async def test_an_expired_set_is_not_enqueued_by_its_late_aggregator(client, r, aredis):
    grouped(client, 2)
    aggregator = Aggregator(aredis, {Q: Aggregation(grace_period=1)})
    set_key = await aggregator._stage(Q, "u1", Aggregation(grace_period=1, max_size=2))
    r.zrem(keys.aggregation_sets(Q), set_key)  # another agent reclaimed it meanwhile
    await aggregator._aggregate_set(Q, "u1", set_key, Aggregation())
    assert not r.exists(keys.pending(Q)) and aggregator.sets_done == 0


# -- a real agent ------------------------------------------------------------------------------


@pytest.fixture
def start_agent(tmp_path, redis_url):
    agents: list[AgentProcess] = []

    def start(aggregation: dict, **kwargs) -> AgentProcess:
        config, port = local_config(tmp_path, redis_url, [{"name": Q, "aggregation": aggregation}],
                                    startup_cmd="python group_worker.py", app_dir=APPS, **kwargs)
        agent = AgentProcess(config, port, tmp_path / f"agent-{port}.log").start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()


def aggregated_results(client, r, expected: int, timeout: float = 30) -> list:
    """The results of the aggregated tasks, once ``expected`` of them completed."""
    def done():
        ids = [i.decode() for i in r.zrange(keys.completed(Q), 0, -1)]
        return ids if len(ids) >= expected else None

    ids = wait_until(done, timeout, what=f"{expected} aggregated tasks completed")
    return [client.get_task(Q, i).result_json() for i in ids]


def test_agent_aggregates_groups_into_a_json_list(start_agent, client, r):
    agent = start_agent({"grace_period": "1s", "max_size": 4})
    for i in range(10):  # max_size 4: two full sets at once, the rest after the grace period
        client.enqueue("notify", {"text": f"line {i}"}, queue=Q, group="u1", retention=600)
    results = aggregated_results(client, r, 3)
    assert sorted(res["count"] for res in results) == [2, 4, 4]
    lines = sorted(item["text"] for res in results for item in res["items"])
    assert lines == sorted(f"line {i}" for i in range(10))
    assert not r.exists(keys.group(Q, "u1")) and not r.smembers(keys.groups(Q))
    assert r.zcard(keys.aggregation_sets(Q)) == 0
    assert agent.get("/readyz").status_code == 200


def test_agent_aggregates_with_the_codes_aggregate_function(start_agent, client, r):
    start_agent({"grace_period": "1s", "aggregate": "child"})
    for user in ("ada", "bob"):
        for i in range(3):
            client.enqueue("notify", {"text": f"{user} {i}"}, queue=Q, group=user, retention=600)
    results = aggregated_results(client, r, 2)
    # oldest first by whole seconds, ties by task ID (as in asynq): compare the sets
    assert sorted((res["group"], tuple(sorted(res["lines"]))) for res in results) == [
        ("ada", ("ada 0", "ada 1", "ada 2")), ("bob", ("bob 0", "bob 1", "bob 2"))]


def test_agent_killed_mid_aggregation_loses_no_grouped_task(start_agent, client, r, tmp_path):
    marker = tmp_path / "aggregating"
    env = {"AGG_MARKER": str(marker)}
    first = start_agent({"grace_period": "1s", "aggregate": "child"}, extra_env=env)
    infos = [client.enqueue("slow", {"text": f"line {i}"}, queue=Q, group="u1", retention=600)
             for i in range(4)]
    wait_until(marker.exists, 20, what="the aggregation function running")
    [(_, set_deadline)] = r.zrange(keys.aggregation_sets(Q), 0, -1, withscores=True)  # staged
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    child = int(marker.read_text())  # the child running the aggregation dies with the agent
    wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie",
               10, what="the aggregating child gone")
    assert all(r.hget(keys.task_key(Q, i.id), "state") == b"aggregating" for i in infos)
    assert not r.exists(keys.pending(Q))
    start_agent({"grace_period": "1s", "aggregate": "child"}, extra_env=env)
    [result] = aggregated_results(client, r, 1, timeout=SET_LEASE + 30)
    [done] = r.zrange(keys.completed(Q), 0, -1)
    assert client.get_task(Q, done.decode()).completed_at >= set_deadline  # once the set expired
    assert sorted(result["lines"]) == [f"line {i}" for i in range(4)]
    time.sleep(1.5)  # nothing more comes of it: aggregated once
    assert r.zcard(keys.completed(Q)) == 1 and not r.exists(keys.pending(Q))
    assert not any(r.exists(keys.task_key(Q, i.id)) for i in infos)
    assert r.zcard(keys.aggregation_sets(Q)) == 0 and not r.exists(keys.group(Q, "u1"))

"""Flow limits in the dequeue script (dequeue_flow.lua), against a real Redis: rates, max_running,
per-key limits with round-robin lanes, type rates; tasks held back stay pending."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from agent.broker import Broker, keys
from agent.broker.flow import FlowControl, FlowLimits, TypeLimit, parse_rate
from agent.broker.options import EnqueueOptions
from tests.test_redis_topologies import _queues_on_different_masters, cluster  # noqa: F401 - a fixture

Q = "flowq"


@pytest.fixture
async def broker(redis_url):
    b = Broker(aioredis.Redis.from_url(redis_url))
    yield b
    await b.close()


def limit(broker: Broker, **kwargs) -> FlowControl:
    broker.flow = FlowControl({Q: FlowLimits(**kwargs)})
    return broker.flow


async def enqueue(broker: Broker, n: int, key: str | None = None, task_type: str = "t", prefix: str = "T") -> list[str]:
    headers = {"rundown-key": key} if key else {}
    results = await broker.enqueue_many([(task_type, b"", EnqueueOptions(queue=Q, task_id=f"{prefix}{i}", headers=headers))
                                         for i in range(n)])
    return [r.id for r in results]


async def test_rate_gives_the_burst_then_one_token_per_interval(broker, r):
    flow = limit(broker, rate=parse_rate("2/s"))  # burst 2, a token every 500 ms
    await enqueue(broker, 10)
    t0 = time.monotonic()
    tasks, _ = await broker.dequeue(Q, count=10)
    assert len(tasks) == 2
    assert flow.state[Q].tokens == 0 and flow.state[Q].reason == "rate"
    assert 0 < flow.blocked[Q] - t0 <= 0.5 + (time.monotonic() - t0)  # when the next token is due
    tasks, _ = await broker.dequeue(Q, count=10)  # asked before it is due: nothing
    assert tasks == []
    assert r.llen(keys.pending(Q)) == 8 and r.llen(keys.active(Q)) == 2
    await asyncio.sleep(max(0.0, flow.blocked[Q] - time.monotonic()))
    tasks, _ = await broker.dequeue(Q, count=10)
    assert len(tasks) == 1


async def test_rate_over_many_fetches_never_exceeds_burst_plus_rate(broker, r):
    flow = limit(broker, rate=parse_rate("100/s"))  # burst 2
    await enqueue(broker, 400)
    starts: list[float] = []  # Redis's clock, the one the limit is kept on
    empty = 0
    for _ in range(40):
        tasks, _ = await broker.dequeue(Q, count=50)
        seconds, micros = r.time()
        starts += [seconds + micros / 1e6] * len(tasks)
        empty += not tasks
        until = flow.next_unblock()  # asked again when the next token is due, not before
        await asyncio.sleep(max(0.0, (until or 0) - time.monotonic()))
    # any 1 s window of Redis's clock: at most burst + rate; and a fetch made when the agent
    # was told its next token is due always gets it (however late a loaded machine runs it)
    worst = max(sum(1 for s in starts if a <= s < a + 1.0) for a in starts)
    assert worst <= 102
    assert empty == 0 and len(starts) >= 40


async def test_max_running_counts_every_lease_of_the_queue(broker, r):
    limit(broker, max_running=3)
    await enqueue(broker, 10)
    r.zadd(keys.lease(Q), {"someone-elses": int(time.time()) + 30})  # another agent's (or Go's) lease
    tasks, _ = await broker.dequeue(Q, count=10)
    assert len(tasks) == 2
    assert (await broker.dequeue(Q, count=10))[0] == []
    assert broker.flow.state[Q].reason == "running" and broker.flow.state[Q].running == 3
    r.zrem(keys.lease(Q), "someone-elses")  # it ended (or was recovered)
    assert len((await broker.dequeue(Q, count=10))[0]) == 1
    assert r.llen(keys.pending(Q)) == 7


async def test_key_limit_and_round_robin_keep_tasks_pending(broker, r):
    limit(broker, key_max_running=2)
    await enqueue(broker, 50, key="A", prefix="A")
    await enqueue(broker, 3, key="B", prefix="B")
    await enqueue(broker, 2, prefix="N")  # no key: not limited per key
    tasks, _ = await broker.dequeue(Q, count=20)
    ids = [t.id for t in tasks]
    assert sorted(i for i in ids if i.startswith("A")) == ["A0", "A1"]
    assert sorted(i for i in ids if i.startswith("B")) == ["B0", "B1"]
    assert sorted(i for i in ids if i.startswith("N")) == ["N0", "N1"]
    assert r.llen(keys.pending(Q)) == 49  # still pending, where asynq's tools see them
    assert r.hget(keys.task_key(Q, "A2"), "state") == b"pending"
    # A's slot comes back when its task's lease goes (done, recovered)
    r.zrem(keys.lease(Q), "A0")
    tasks, _ = await broker.dequeue(Q, count=20)
    assert [t.id for t in tasks] == ["A2"]


async def test_a_small_key_is_served_before_a_big_backlog(broker):
    limit(broker, key_max_running=100)
    await enqueue(broker, 1000, key="A", prefix="A")
    await enqueue(broker, 5, key="B", prefix="B")
    tasks, _ = await broker.dequeue(Q, count=10)
    assert sum(t.id.startswith("B") for t in tasks) == 5


async def test_type_rate_holds_only_its_type(broker):
    flow = limit(broker, types={"email:send": TypeLimit(parse_rate("1/m"))})
    await enqueue(broker, 10, task_type="email:send", prefix="E")
    await enqueue(broker, 10, task_type="other", prefix="O")
    tasks, _ = await broker.dequeue(Q, count=20)
    assert sum(t.id.startswith("E") for t in tasks) == 2
    assert sum(t.id.startswith("O") for t in tasks) == 10
    tasks, _ = await broker.dequeue(Q, count=20)
    assert tasks == [] and flow.state[Q].reason == "type"


async def test_tasks_taken_by_another_consumer_are_skipped(broker, r):
    limit(broker, key_max_running=5)
    await enqueue(broker, 4, key="A", prefix="A")
    assert (await broker.dequeue(Q, count=1))[0][0].id == "A0"
    # a Go asynq server (no limits) takes the next two straight from pending
    r.rpoplpush(keys.pending(Q), keys.active(Q))
    r.rpoplpush(keys.pending(Q), keys.active(Q))
    tasks, _ = await broker.dequeue(Q, count=5)
    assert [t.id for t in tasks] == ["A3"]


async def test_requeued_and_forwarded_tasks_are_indexed_again(broker, r):
    limit(broker, key_max_running=5)
    await enqueue(broker, 2, key="A", prefix="A")
    tasks, _ = await broker.dequeue(Q, count=1)
    await broker.requeue(tasks[0])
    got, _ = await broker.dequeue(Q, count=5)
    assert sorted(t.id for t in got) == ["A0", "A1"]
    assert r.llen(keys.pending(Q)) == 0


async def test_paused_queue_gives_nothing_and_is_not_throttled(broker, r):
    flow = limit(broker, max_running=1)
    await enqueue(broker, 2)
    r.set(keys.paused(Q), 1)
    assert (await broker.dequeue(Q, count=5))[0] == []
    assert not flow.is_blocked(Q, time.monotonic())


async def test_orphan_ids_are_dropped_under_lanes(broker, r):
    limit(broker, key_max_running=5)
    r.lpush(keys.pending(Q), "ghost")
    await enqueue(broker, 1, key="A", prefix="A")
    tasks, orphans = await broker.dequeue(Q, count=5)
    assert [t.id for t in tasks] == ["A0"] and orphans == ["ghost"]
    assert r.llen(keys.active(Q)) == 1


async def test_inspect_stats_and_metrics_show_limits_tokens_and_running(broker, r, redis_url, monkeypatch):
    import json as jsonlib

    from click.testing import CliRunner
    from prometheus_client import CollectorRegistry, generate_latest

    from agent.broker.flow import publish_limits
    from agent.inspect.cli import inspect_cli
    from agent.ops.metrics import SampledCollector

    lim = FlowLimits(rate=parse_rate("1/m"), max_running=5, key_max_running=2,
                     types={"email:send": TypeLimit(parse_rate("1/s"))})
    flow = limit(broker, **{f: getattr(lim, f) for f in ("rate", "max_running", "key_max_running", "types")})
    await publish_limits(broker.redis, {Q: lim, "other": FlowLimits()})
    await enqueue(broker, 6)
    await broker.redis.sadd(keys.ALL_QUEUES, Q)
    tasks, _ = await broker.dequeue(Q, count=6)  # 2 tokens: 2 taken, the fetch cut short by the rate
    assert len(tasks) == 2
    monkeypatch.delenv("RUNDOWN_REDIS_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(inspect_cli, ["--redis", redis_url, "stats"])
    assert out.exit_code == 0, out.output
    assert "Flow limits" in out.output
    line = next(x for x in out.output.splitlines() if x.startswith(Q) and "1/m" in x)
    assert line.split()[:6] == [Q, "1/m", "0", "5", "2", "2"]  # rate, tokens, max, running, key max
    data = jsonlib.loads(CliRunner().invoke(inspect_cli, ["--redis", redis_url, "--json", "stats"]).output)
    entry = next(q for q in data["queues"] if q["queue"] == Q)
    assert entry["flow"]["running"] == 2 and entry["flow"]["types"] == {"email:send": {"rate": "1/s"}}
    registry = CollectorRegistry()
    registry.register(SampledCollector(lambda: {"flow": flow}))
    text = generate_latest(registry).decode()
    assert f'rundown_flow_throttled_fetches_total{{limit="rate",queue="{Q}"}} 1.0' in text
    assert f'rundown_flow_running{{queue="{Q}"}} 2.0' in text
    assert f'rundown_flow_tokens{{queue="{Q}"}} 0.0' in text


def calls(r, command: str) -> int:
    """How many times Redis ran ``command`` (scripts' calls included): work, not wall time."""
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_big_backlog_is_indexed_oldest_first_in_bounded_steps(broker, r):
    limit(broker, key_max_running=1000)
    await enqueue(broker, 12_000, key="A", prefix="A")
    r.config_resetstat()
    seen: list[str] = []
    for _ in range(3):
        tasks, _ = await broker.dequeue(Q, count=100)
        seen += [t.id for t in tasks]
    assert seen == [f"A{i}" for i in range(300)]  # FIFO within a key, across index steps
    # each call indexes at most 5,000 and looks at the prefix near its boundary only: no
    # call rescans the 12,000-long unindexed prefix
    assert calls(r, "hget") <= 3 * (5000 + 100)
    assert calls(r, "sismember") <= 3 * 1100


async def test_ids_taken_by_another_consumer_do_not_hide_new_ones(broker, r):
    limit(broker, key_max_running=1000)
    await enqueue(broker, 50, key="A", prefix="A")
    assert len((await broker.dequeue(Q, count=1))[0]) == 1  # indexes all 50
    for _ in range(40):  # a Go server takes 40 (they stay in the index: SCARD overcounts)
        r.rpoplpush(keys.pending(Q), keys.active(Q))
    await enqueue(broker, 30, key="B", prefix="B")
    got: list[str] = []
    for _ in range(10):
        tasks, _ = await broker.dequeue(Q, count=100)
        got += [t.id for t in tasks]
    assert sorted(got) == sorted([f"A{i}" for i in range(41, 50)] + [f"B{i}" for i in range(30)])
    assert r.llen(keys.pending(Q)) == 0


async def test_a_task_archived_and_run_again_is_dequeued_once(broker, r):
    limit(broker, key_max_running=1000)
    await enqueue(broker, 3, key="A", prefix="A")
    assert (await broker.dequeue(Q, count=1))[0][0].id == "A0"  # A1, A2 indexed
    r.lrem(keys.pending(Q), 0, "A1")  # an inspector archives A1 ...
    r.lpush(keys.pending(Q), "A1")  # ... and runs it again
    await enqueue(broker, 1, key="A", prefix="N")
    got: list[str] = []
    for _ in range(4):
        got += [t.id for t in (await broker.dequeue(Q, count=10))[0]]
    assert sorted(got) == ["A1", "A2", "N0"]
    assert r.llen(keys.pending(Q)) == 0 and r.llen(keys.active(Q)) == 4


async def test_requeued_ids_on_the_right_and_new_ones_on_the_left(broker, r):
    limit(broker, key_max_running=1000)
    await enqueue(broker, 5, key="A", prefix="A")
    tasks, _ = await broker.dequeue(Q, count=2)
    for t in tasks:
        await broker.requeue(t)  # back on the right end: unindexed
    await enqueue(broker, 2, key="A", prefix="N")  # new on the left end
    got: list[str] = []
    for _ in range(3):
        got += [t.id for t in (await broker.dequeue(Q, count=10))[0]]
    assert sorted(got) == ["A0", "A1", "A2", "A3", "A4", "N0", "N1"]


async def test_flow_limits_on_a_redis_cluster(cluster):  # noqa: F811 - the imported fixture
    """Every key of a flow dequeue carries the queue's hash tag: one slot per call, on queues
    whose slots live on three different masters."""
    from redis.cluster import key_slot

    from agent.broker import connection

    client = connection.async_client(cluster, socket_timeout=5)
    broker = Broker(client)
    try:
        queues = _queues_on_different_masters("flow")
        lim = FlowLimits(rate=parse_rate("1000/s"), max_running=3, key_max_running=2,
                         types={"t": TypeLimit(parse_rate("1000/s"))})
        broker.flow = FlowControl({q: lim for q in queues})
        for queue in queues:
            call = broker.flow.call(queue, time.time(), 5)
            assert len({key_slot(k.encode()) for k in call.keys}) == 1
        results = await broker.enqueue_many([("t", b"", EnqueueOptions(queue=q, headers={"rundown-key": k}))
                                             for q in queues for k in ("A", "A", "A", "B")])
        assert not [x for x in results if isinstance(x, Exception)]
        counts = (await broker.dequeue_counts({q: 10 for q in queues}))[2]
        assert counts == {q: 3 for q in queues}  # max_running 3: A twice (its limit), B once
    finally:
        await client.aclose()


async def test_many_keys_each_get_a_turn(broker, r):
    limit(broker, key_max_running=1)
    results = await broker.enqueue_many([("t", b"", EnqueueOptions(queue=Q, task_id=f"K{i}-{j}",
                                                                   headers={"rundown-key": f"tenant-{i}"}))
                                         for j in range(2) for i in range(2000)])
    assert not [x for x in results if isinstance(x, Exception)]
    got: list[str] = []
    for _ in range(25):
        got += [t.id for t in (await broker.dequeue(Q, count=100))[0]]
    # one running task per key: the first task of each of the 2,000 tenants, none of the second
    assert sorted(got) == sorted(f"K{i}-0" for i in range(2000))
    assert (await broker.dequeue(Q, count=100))[0] == []
    assert broker.flow.state[Q].reason == "key"


async def test_limits_changed_while_tasks_wait(broker, r):
    """Agents restarted with other limits: a lane of a type no longer rated, or of keys no
    longer limited, still gives its tasks; none is lost or taken twice."""
    limit(broker, key_max_running=1, types={"slow": TypeLimit(parse_rate("1/m"))})
    await enqueue(broker, 4, key="A", task_type="slow", prefix="S")
    await enqueue(broker, 4, key="A", task_type="fast", prefix="F")
    first = [t.id for t in (await broker.dequeue(Q, count=10))[0]]
    assert len(first) == 1
    limit(broker, key_max_running=5)  # the type rate is gone, the key limit raised
    second = [t.id for t in (await broker.dequeue(Q, count=10))[0]]
    limit(broker, max_running=100)  # no lanes at all: the plain dequeue of the same list
    third = [t.id for t in (await broker.dequeue(Q, count=10))[0]]
    taken = first + second + third
    assert sorted(taken) == sorted([f"S{i}" for i in range(4)] + [f"F{i}" for i in range(4)])
    assert len(second) == 4  # key A: 5 at most, 1 already running
    assert r.llen(keys.pending(Q)) == 0


async def test_a_key_with_a_nul_character_is_its_own_key(broker):
    limit(broker, key_max_running=1, types={"t": TypeLimit(parse_rate("1000/s"))})
    await enqueue(broker, 2, key="a\0b", prefix="X")
    await enqueue(broker, 2, key="a", prefix="Y")
    tasks, _ = await broker.dequeue(Q, count=10)
    assert sorted(t.id for t in tasks) == ["X0", "Y0"]

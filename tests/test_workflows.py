"""Workflows: shapes, the Redis state, and real agents running chains, groups and
``depends_on`` on a real Redis (the crash and scale tests are in test_workflows_chaos.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agent.broker import keys
from agent.client import AsyncClient, Client, sig
from agent.workflows import keys as wk
from agent.workflows.engine import WorkflowEngine
from agent.workflows.graph import Chain, Group, build_graph, parse_shape
from agent.workflows.recovery import sweep
from tests.agentproc import AgentProcess, local_config, wait_until

APPS = Path(__file__).parent / "apps"


def test_a_chain_passes_previous_and_a_group_passes_results_in_order():
    nodes = build_graph(Chain((sig("a", {"n": 1}), Group((sig("b"), sig("c")), then=sig("d")),
                               sig("e"), Group((sig("f"), Chain((sig("g"), sig("h"))))), sig("i"))))
    by_type = {n.type: n for n in nodes}
    assert by_type["a"].deps == [] and by_type["a"].passes is None
    assert by_type["b"].deps == [by_type["a"].id] and by_type["b"].passes == "previous"
    assert by_type["d"].deps == [by_type["b"].id, by_type["c"].id] and by_type["d"].passes == "results"
    assert by_type["e"].passes == "previous" and by_type["e"].deps == [by_type["d"].id]
    assert by_type["h"].deps == [by_type["g"].id]
    assert by_type["i"].deps == [by_type["f"].id, by_type["h"].id] and by_type["i"].passes == "results"
    assert by_type["a"].children == [by_type["b"].id, by_type["c"].id]


def test_bad_steps_are_refused_naming_the_step():
    with pytest.raises(ValueError, match="sig\\('b'\\): a step that receives the previous result"):
        build_graph(Chain((sig("a", [1]), sig("b", [1, 2]))))  # a first step may take any payload
    assert sig("b", [1, 2], pass_result=False).payload == [1, 2]
    with pytest.raises(ValueError, match="unknown option\\(s\\) task_id"):
        sig("b", task_id="x")
    with pytest.raises(ValueError, match="retention must be above 0"):
        sig("b", retention=0)
    with pytest.raises(ValueError, match="queue name"):
        sig("b", queue=" ")
    with pytest.raises(ValueError, match="workflow.chain\\[1\\].group\\[0\\]: .*type"):
        parse_shape({"chain": [{"type": "a"}, {"group": [{"payload": {}}]}]})
    with pytest.raises(ValueError, match="workflow.then: expected one task"):
        parse_shape({"group": [{"type": "a"}], "then": {"chain": [{"type": "b"}]}})


def test_creating_a_workflow_writes_its_state_and_enqueues_its_roots(r, redis_url):
    with Client(redis_url) as client:
        info = client.group([sig("a", {"n": 1}, queue="wq"), sig("b", queue="wq")], then=sig("c", queue="wq"))
        view = client.get_workflow(info.id)
    assert [s["state"] for s in view["steps"]] == ["enqueued", "enqueued", "waiting"]
    assert view["state"] == "running" and view["total"] == 3 and view["done"] == 0
    pending = {i.decode() for i in r.lrange(keys.pending("wq"), 0, -1)}
    assert pending == set(info.task_ids[:2])
    from agent.broker.messages import decode_task_message

    msg = decode_task_message(r.hget(keys.task_key("wq", info.task_ids[0]), "msg"))
    assert msg.headers[wk.HEADER_WORKFLOW] == info.id and msg.headers[wk.HEADER_NODE] == "0"
    assert msg.retention == 86400 and json.loads(msg.payload) == {"n": 1}
    assert r.zscore(wk.INDEX, info.id) is not None
    slots = {k.split("}")[0] for k in wk.workflow_keys(info.id)}
    assert len(slots) == 1  # one hash tag: one Cluster slot


async def test_a_crash_between_completion_and_successor_enqueue_is_recovered(r, redis_url):
    """The step's completion is recorded but its successor never enqueued (the agent died
    between the two): a sweep enqueues it, and a second sweep or a re-run of the step's
    hook enqueues nothing more."""
    client = aioredis.from_url(redis_url)
    engine = WorkflowEngine(client)
    async with AsyncClient(redis_url) as producer:
        info = await producer.chain([sig("a", queue="wq"), sig("b", {"k": 1}, queue="wq")])
    keys_ = wk.workflow_keys(info.id)
    # what engine.completed does first, alone: the script, not the enqueue after it
    reply = await engine._complete(keys=keys_, args=["0", b'{"x": 7}', int(time.time()), 60])
    assert reply[0] == b"running" and [x[0] for x in reply[1:]] == [b"1"]
    assert reply[1][2] == [b'{"x": 7}']  # the successor's spec and what it receives, at once
    assert r.llen(keys.pending("wq")) == 1  # only the first step's task
    # the first step's task is done (as the agent would have left it)
    r.hset(keys.task_key("wq", info.task_ids[0]), "state", "completed")
    assert await sweep(engine) >= 1
    assert {i.decode() for i in r.lrange(keys.pending("wq"), 0, -1)} == set(info.task_ids)
    msg_b = r.hget(keys.task_key("wq", info.task_ids[1]), "msg")
    from agent.broker.messages import decode_task_message

    assert json.loads(decode_task_message(msg_b).payload) == {"k": 1, "previous": {"x": 7}}
    await sweep(engine)
    await engine.completed(info.id, "0", b'{"x": 8}')  # a late hook: the first result stays
    assert r.llen(keys.pending("wq")) == 2
    view = await engine.show(info.id)
    assert view["steps"][0]["result"] == {"x": 7} and view["steps"][1]["state"] == "enqueued"
    await client.aclose()


def _agent(tmp_path, redis_url, queues=("wq",), concurrency=4, name="a"):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    path, port = local_config(d, redis_url, list(queues), concurrency=concurrency, processes=concurrency,
                              startup_cmd="python workflow_worker.py", app_dir=APPS,
                              extra_env={"WF_REDIS_URL": redis_url})
    return AgentProcess(path, port, tmp_path / f"{name}.log")


def _runs(r) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall("wftest:runs").items()}


def test_chain_group_and_depends_on_run_on_a_real_agent(tmp_path, redis_url, r):
    agent = _agent(tmp_path, redis_url).start()
    try:
        with Client(redis_url) as client:
            chain = client.chain([sig("wf:step", {"n": i}, queue="wq") for i in range(5)])
            fan = client.group([sig("wf:step", {"n": i, "sleep": 0.2 * (3 - i)}, queue="wq")
                                for i in range(3)], then=sig("wf:step", {"n": "merge"}, queue="wq"))
            first = client.enqueue("wf:step", {"n": "x"}, queue="wq", retention=3600)
            after = client.enqueue("wf:step", {"n": "after"}, queue="wq", depends_on=[first.id])
            assert after.state == "waiting"
            wait_until(lambda: client.get_workflow(chain.id)["state"] == "succeeded", 30, what="chain")
            wait_until(lambda: client.get_workflow(fan.id)["state"] == "succeeded", 30, what="group")
            done = client.wait("wq", after.id, timeout=30)
            steps = client.get_workflow(chain.id)["steps"]
            assert [s["result"]["n"] for s in steps] == [0, 1, 2, 3, 4]
            assert [s["result"]["prev"] for s in steps[1:]] == [0, 1, 2, 3]
            merge = client.get_workflow(fan.id)["steps"][-1]["result"]
            assert merge["results"] == [0, 1, 2]  # in order, not finish order
            assert done.state == "completed"
            runs = _runs(r)
            assert all(runs[t] == 1 for t in [*chain.task_ids, *fan.task_ids, after.id]), runs
            assert r.zscore(wk.INDEX, chain.id) is None  # finished: out of the index
    finally:
        agent.stop()


def test_a_failing_step_stops_its_descendants_and_a_retry_finishes(tmp_path, redis_url, r):
    from agent.inspect.inspector import Inspector

    agent = _agent(tmp_path, redis_url).start()
    try:
        with Client(redis_url) as client:
            info = client.chain([sig("wf:step", {"n": 0}, queue="wq"), sig("wf:fail", {"n": 1}, queue="wq"),
                                 sig("wf:step", {"n": 2}, queue="wq")])
            wait_until(lambda: client.get_workflow(info.id)["state"] == "failed", 30, what="failed")
            time.sleep(1.5)  # a recovery sweep or two: nothing moves
            view = client.get_workflow(info.id)
            assert [s["state"] for s in view["steps"]] == ["succeeded", "failed", "waiting"]
            assert "fails on purpose" in view["steps"][1]["error"]
            assert info.task_ids[2] not in _runs(r)
            r.set("wftest:allow:1", 1)
            Inspector.from_url(redis_url).retry_task("wq", info.task_ids[1])
            wait_until(lambda: client.get_workflow(info.id)["state"] == "succeeded", 30, what="resumed")
            steps = client.get_workflow(info.id)["steps"]
            assert steps[2]["result"]["prev_recovered"] is True
            assert _runs(r)[info.task_ids[1]] == 2 and _runs(r)[info.task_ids[2]] == 1
    finally:
        agent.stop()


def test_steps_run_by_another_consumer_move_on_through_recovery(tmp_path, redis_url, r):
    """A step completed by something without the hook (a Go asynq server; here the Broker's
    own complete call) is seen by the recovery loop of any agent, which moves the workflow on."""
    async def scenario():
        from agent.broker import Broker

        async with AsyncClient(redis_url) as producer:
            info = await producer.chain([sig("foreign", queue="gq"), sig("wf:step", {"n": 1}, queue="wq")])
        broker = Broker(aioredis.from_url(redis_url))
        (task,), _ = await broker.dequeue("gq", 1)
        await broker.complete(task, b'{"from": "go"}')
        await broker.close()
        return info

    info = asyncio.run(scenario())
    agent = _agent(tmp_path, redis_url).start()
    try:
        with Client(redis_url) as client:
            wait_until(lambda: client.get_workflow(info.id)["state"] == "succeeded", 30, what="recovered")
            from agent.broker.messages import decode_task_message

            msg = decode_task_message(r.hget(keys.task_key("wq", info.task_ids[1]), "msg"))
            assert json.loads(msg.payload) == {"n": 1, "previous": {"from": "go"}}
    finally:
        agent.stop()


def test_inspect_workflow_show(redis_url, r):
    from click.testing import CliRunner

    from agent.inspect.cli import Settings, inspect_cli
    from agent.workflows.engine import WorkflowEngine, run_sync

    with Client(redis_url) as client:
        info = client.chain([sig("a", {"n": 1}, queue="wq"), sig("b", queue="wq")], workflow_id="wf-show")
    run_sync(WorkflowEngine(r).failed(info.id, "0", "ValueError: bad input"))
    runner = CliRunner()
    out = runner.invoke(inspect_cli, ["--redis", redis_url, "workflow", "show", "wf-show"], obj=Settings(),
                        env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "Workflow wf-show: failed, 0/2 steps done, 1 failed" in out.output
    assert "ValueError: bad input" in out.output and "wf-show:1" in out.output
    out = runner.invoke(inspect_cli, ["--redis", redis_url, "--json", "workflow", "show", "wf-show"], obj=Settings())
    data = json.loads(out.output)
    assert [s["state"] for s in data["steps"]] == ["failed", "waiting"] and data["steps"][1]["after"] == ["0"]
    out = runner.invoke(inspect_cli, ["--redis", redis_url, "workflow", "show", "nope"], obj=Settings())
    assert out.exit_code == 1 and "no workflow 'nope'" in out.output

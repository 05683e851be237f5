"""Periodic tasks and workflows on a three-master Redis Cluster: a scheduler's claim and a
workflow's moves are each one script in one slot, whatever masters the queues live on."""

from __future__ import annotations

import time

import pytest
import yaml

from agent.broker import keys
from agent.client import Client, sig
from agent.workflows import keys as wk
from tests.agentproc import AgentProcess, local_config, wait_until
from tests.test_redis_topologies import _queues_on_different_masters, cluster  # noqa: F401 - fixture
from tests.test_workflows import APPS


@pytest.mark.timeout(120)
def test_schedule_and_workflow_on_a_cluster(cluster, tmp_path):  # noqa: F811 - the fixture
    queues = _queues_on_different_masters("wfc")
    config, port = local_config(tmp_path, cluster, queues, concurrency=2, processes=2,
                                startup_cmd="python workflow_worker.py", app_dir=APPS,
                                extra_env={"WF_REDIS_URL": "redis://" + cluster.split("//")[1].split(",")[0],
                                           "WF_CLUSTER": "1"})
    data = yaml.safe_load(config.read_text())
    data["schedule"] = [{"every": "1s", "type": "tick", "queue": q, "id": f"tick-{q}"} for q in ("ta", "tb")]
    config.write_text(yaml.safe_dump(data))
    agent = AgentProcess(config, port, tmp_path / "agent.log").start()
    try:
        with Client(cluster) as client:
            start = time.time()
            info = client.chain([sig("wf:step", {"n": i}, queue=queues[i % 3]) for i in range(6)]
                                + [sig("wf:step", {"n": 6}, queue=queues[0])])
            wait_until(lambda: client.get_workflow(info.id)["state"] == "succeeded", 60, what="chain")
            steps = client.get_workflow(info.id)["steps"]
            assert [s["result"]["prev"] for s in steps[1:]] == [0, 1, 2, 3, 4, 5]
            wait_until(lambda: time.time() > start + 3, 5)
            for q in ("ta", "tb"):
                ids = [i.decode() for i in client.redis.lrange(keys.pending(q), 0, -1)]
                assert len(ids) >= 2 and len(ids) == len(set(ids)), ids
            assert client.redis.zcard("asynq:schedulers") == 2
            assert client.redis.zscore(wk.INDEX, info.id) is None
    finally:
        assert agent.stop() == 0
    assert "Traceback" not in agent.output(), agent.output()[-3000:]

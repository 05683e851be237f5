"""Group aggregation set in the control server's queues file: parsed there with field-named
problems, handed to agents in the registration answer (``aggregation``), parsed by the agent
with field-named errors, and applied to every sub-queue of the parent by a real agent
registered with a real ``rundown-server`` process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.bootstrap.errors import BadResponseError
from agent.bootstrap.register import parse_answer
from agent.broker import keys
from agent.client import Client
from agent.config.aggregation import Aggregation
from agent.config.model import QueueSpec
from agent.runtime.aggregator import aggregation_rules
from agent.server.app import registration_answer
from agent.server.queues import QueuesFileError, parse_queues
from tests.agentproc import APPS, spawn_agent, wait_until

KEY = "worker-key-0123456789abcdef"
DEPLOYMENT = {"git_url": "https://git.example/acme/tasks.git", "startup_cmd": "python group_worker.py"}


def doc(aggregation, **queue) -> dict:
    return {"api_keys": [{"name": "w", "key": KEY, "role": "worker"}],
            "queues": {"notify": {"deployment": dict(DEPLOYMENT), "aggregation": aggregation, **queue}}}


def test_the_queues_file_takes_the_agent_configs_aggregation_keys():
    settings = parse_queues(doc({"grace_period": "2s", "max_delay": "1m", "max_size": 50,
                                 "task_type": "digest"}), environ={})
    rule = settings.queues["notify"].aggregation
    assert rule == Aggregation(grace_period=2.0, max_delay=60.0, max_size=50, task_type="digest")
    assert parse_queues(doc(None), environ={}).queues["notify"].aggregation is None


@pytest.mark.parametrize(("aggregation", "expected"), [
    ({"grace_period": "10ms"}, "queues.notify.aggregation.grace_period: expected a duration of at least 1s"),
    ({"max_size": -1}, "queues.notify.aggregation.max_size: "),
    ({"aggregate": "sum"}, "queues.notify.aggregation.aggregate: expected json_list or child"),
    ({"grace": "1s"}, "queues.notify.aggregation.grace: unknown key 'grace'"),
    ({"aggregate": "child", "task_type": "x"}, "queues.notify.aggregation.task_type: applies to aggregate: json_list only"),
    ("1s", "queues.notify.aggregation: expected a mapping of grace_period"),
])
def test_a_bad_aggregation_in_the_queues_file_names_its_field(aggregation, expected):
    with pytest.raises(QueuesFileError) as info:
        parse_queues(doc(aggregation), environ={})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(expected), info.value.problems


def test_the_registration_answer_carries_it_and_the_agent_reads_it_back():
    settings = parse_queues(doc({"grace_period": "3s", "max_size": 7}, sub_queues={"high": 2, "low": 1}),
                            environ={}, redis_url="redis://127.0.0.1:6379/0")
    answer = registration_answer(settings, settings.queues["notify"])
    assert answer["aggregation"] == {"grace_period": 3.0, "max_delay": 0.0, "max_size": 7,
                                     "aggregate": "json_list"}
    _, queue = parse_answer(answer, "notify", "http://server")
    assert queue.aggregation == Aggregation(grace_period=3.0, max_size=7)
    plain = parse_queues(doc(None), environ={}, redis_url="redis://127.0.0.1:6379/0")
    assert "aggregation" not in registration_answer(plain, plain.queues["notify"])


@pytest.mark.parametrize(("aggregation", "path", "problem"), [
    ({"max_size": "many"}, "aggregation.max_size", "expected"),
    ({"grace_period": 0.5}, "aggregation.grace_period", "at least 1s"),
    ({"what": 1}, "aggregation.what", "unknown key"),
    ("every second", "aggregation", "must be an object, got a string"),
])
def test_a_bad_aggregation_in_an_answer_is_an_error_naming_the_field(aggregation, path, problem):
    answer = {"redis": "redis://127.0.0.1:6379/0", "deployment": DEPLOYMENT, "aggregation": aggregation}
    with pytest.raises(BadResponseError) as info:
        parse_answer(answer, "notify", "http://server")
    text = str(info.value)
    assert path in text and problem in text, text


def test_the_servers_aggregation_wins_then_the_queue_then_its_parent():
    server = Aggregation(grace_period=5.0)
    mine, parents = Aggregation(grace_period=9.0), Aggregation(grace_period=20.0)
    configured = [QueueSpec(name="a.x", aggregation=mine), QueueSpec(name="a", aggregation=parents),
                  QueueSpec(name="b")]
    rules = aggregation_rules(["a.x", "a.y", "b", "c"], {"a.x": server, "c": server}, configured)
    assert rules == {"a.x": server, "a.y": parents, "c": server}


# -- a real rundown-server and a real agent ------------------------------------------------


def _git_repo(path: Path) -> Path:
    path.mkdir()
    shutil.copy(APPS / "group_worker.py", path / "group_worker.py")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "tasks"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    return path


def test_an_agent_aggregates_the_groups_of_every_sub_queue_as_the_queues_file_says(
        tmp_path, redis_url, r):
    """The agent's own config has no aggregation: the queues file's reaches it through the
    registration answer and applies to notify.high and notify.low; /status and /metrics count
    the groups and tasks aggregated."""
    repo = _git_repo(tmp_path / "repo")
    queues_file = tmp_path / "queues.yml"
    queues_file.write_text(yaml.safe_dump({
        "api_keys": [{"name": "agents", "key": KEY, "role": "worker"}],
        "queues": {"notify": {
            "sub_queues": {"high": 2, "low": 1},
            "aggregation": {"grace_period": "1s", "max_size": 3},
            "deployment": {"git_url": repo.as_uri(), "branch": "main",
                           "startup_cmd": "python group_worker.py"}}}}))
    server_log = tmp_path / "server.log"
    with open(server_log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "agent.server.cli", "--queues", str(queues_file), "--redis", redis_url,
             "--listen", "127.0.0.1:0"], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    agent = None
    try:
        found = wait_until(lambda: re.search(r"listening on (http://\S+)", server_log.read_text())
                           or server.poll() is not None, 30, what="rundown-server listening")
        assert server.poll() is None, server_log.read_text()
        url = found.group(1)
        from agent.local_redis import free_port

        port = free_port()
        config = tmp_path / "agent.yml"
        config.write_text(yaml.safe_dump({
            "server": {"url": url, "api_key": KEY}, "worker": {"queues": ["notify"], "concurrency": 2},
            "deployment": {"dir": str(tmp_path / "deployments"), "venv": "none"},
            "ops": {"listen": f"127.0.0.1:{port}"}, "logging": {"format": "json"}}))
        agent = spawn_agent(config, port, tmp_path / "agent.log")
        agent.wait_ready(120)
        with Client(redis_url) as client:
            for queue in ("notify.high", "notify.low"):
                for i in range(4):  # max_size 3: one full set at once, one of 1 after the grace period
                    client.enqueue("notify", {"text": f"{queue} {i}"}, queue=queue, group="u1",
                                   retention=600)

            def results():
                done = {q: r.zrange(keys.completed(q), 0, -1) for q in ("notify.high", "notify.low")}
                if sum(len(ids) for ids in done.values()) < 4:
                    return None
                return {q: [client.get_task(q, i.decode()).result_json() for i in ids]
                        for q, ids in done.items()}

            done = wait_until(results, 40, what="4 aggregated tasks completed")
        for queue, items in done.items():
            assert sorted(res["count"] for res in items) == [1, 3]
            assert sorted(x["text"] for res in items for x in res["items"]) == [f"{queue} {i}" for i in range(4)]
            assert not r.exists(keys.group(queue, "u1")) and not r.zcard(keys.aggregation_sets(queue))
        status = agent.get("/status").json()["aggregation"]
        assert set(status) == {"notify.high", "notify.low"}
        for entry in status.values():
            assert entry["grace_period"] == 1.0 and entry["max_size"] == 3
            assert entry["groups_aggregated"] == 2 and entry["tasks_aggregated"] == 4
        metrics = agent.get("/metrics").text
        assert 'rundown_aggregation_groups_total{queue="notify.high"} 2.0' in metrics
        assert 'rundown_aggregation_tasks_total{queue="notify.low"} 4.0' in metrics
    finally:
        if agent is not None and agent.proc is not None and agent.proc.poll() is None:
            agent.signal()
            agent.wait(30)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)

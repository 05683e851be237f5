"""Flow limits as written in the agent config, the queues file and the register answer."""

from __future__ import annotations

import pytest

from agent.bootstrap.errors import BadResponseError
from agent.bootstrap.register import parse_answer, register
from agent.config import ConfigError, load_config
from agent.config.flow import FlowLimits, parse_rate
from agent.config.model import (
    BootstrapConfig,
    Config,
    QueueSpec,
    Secret,
    ServerConfig,
    WorkerConfig,
)
from agent.runtime.app import flow_limits, server_plan
from agent.server import ServerThread, create_app, parse_queues
from agent.server.app import registration_answer
from agent.server.queues import QueuesFileError

WORKER_KEY = "worker-key-0123456789"


@pytest.mark.parametrize("text, per_second", [("50/s", 50), ("1000/m", 1000 / 60), ("10/h", 10 / 3600),
                                              ("5/10s", 0.5), ("0.5/s", 0.5), (20, 20), ("3 / 100ms", 30)])
def test_rates(text, per_second):
    assert parse_rate(text).per_second == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["fast", "0/s", "-1/s", "10/x", "", True, "1e9/s"])
def test_bad_rates_are_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match="a rate like"):
        parse_rate(text)


def test_burst_keeps_a_one_second_window_near_the_rate():
    assert parse_rate("50/s").burst == 2
    assert parse_rate("1/s").burst == 2
    assert parse_rate("10000/s").burst == 200


def write(tmp_path, queues: str):
    path = tmp_path / "agent.yml"
    path.write_text("redis: {url: 'redis://127.0.0.1:1/0'}\ndeployment: {path: /tmp, startup_cmd: python w.py}\n"
                    f"worker:\n  queues:\n{queues}")
    return path


def test_agent_config_keys(tmp_path):
    config = load_config(write(tmp_path, '    - {name: emails, rate: 50/s, max_running: 4, key_max_running: 5,'
                                         ' types: {"email:send": {rate: 10/s}}}\n    - plain\n'))
    emails, plain = config.worker.queues
    assert emails.flow.rate.per_second == 50 and emails.flow.max_running == 4
    assert emails.flow.key_max_running == 5 and emails.flow.types["email:send"].rate.per_second == 10
    assert emails.flow.lanes and not plain.flow


def test_validate_summary_shows_the_limits(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, '    - {name: emails, rate: 1000/m, max_running: 4, types: {"e:send": {rate: 2/s}}}\n')
    done = subprocess.run([sys.executable, "-m", "agent.cli", "-validate", "-config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "emails (weight 1, rate 1000/m, max_running 4, types e:send 2/s)" in done.stdout


def test_agent_config_problems_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, '    - {name: q, rate: fast, max_running: 0, key_max_running: x,'
                                    ' types: {"a": {rate: 1/s, burst: 2}, "b": {rate: nope}}}\n'))
    text = str(err.value)
    for where in ("worker.queues[0].rate", "worker.queues[0].max_running", "worker.queues[0].key_max_running",
                  'worker.queues[0].types."a"', 'worker.queues[0].types."b".rate'):
        assert where in text


def server_doc(flow: dict) -> dict:
    return {"api_keys": [{"name": "agents", "key": WORKER_KEY, "role": "worker"}],
            "queues": {"emails": {"sub_queues": {"high": 2, "low": 1}, **flow,
                                  "deployment": {"git_url": "https://git.example/a.git",
                                                 "startup_cmd": "python w.py"}}}}


def test_queues_file_keys_reach_the_register_answer(redis_url):
    settings = parse_queues(server_doc({"rate": "1000/m", "max_running": 4, "types": {"e:send": {"rate": "2/s"}}}),
                            redis_url=redis_url)
    answer = registration_answer(settings, settings.queues["emails"])
    assert answer["flow"] == {"rate": "1000/m", "max_running": 4, "types": {"e:send": {"rate": "2/s"}}}
    _, reg = parse_answer(answer, "emails")
    assert reg.flow.rate.per_second == pytest.approx(1000 / 60) and reg.flow.max_running == 4


def test_queues_file_problems_name_the_queue():
    with pytest.raises(QueuesFileError) as err:
        parse_queues(server_doc({"rate": "lots", "key_max_running": -1}))
    assert "queues.emails.rate" in str(err.value) and "queues.emails.key_max_running" in str(err.value)


def test_a_bad_flow_block_in_the_register_answer_is_named():
    answer = {"redis": "redis://127.0.0.1:6379/0", "sub_queues": {"a": 1},
              "deployment": {"git_url": "https://git.example/a.git", "startup_cmd": "python w.py"},
              "flow": {"rate": "often"}}
    with pytest.raises(BadResponseError, match="flow.rate"):
        parse_answer(answer, "emails")
    answer["flow"] = {"max_running": 2, "burst": 3}
    with pytest.raises(BadResponseError, match="flow.burst"):
        parse_answer(answer, "emails")


async def test_registration_hands_every_sub_queue_the_servers_limits(redis_url):
    settings = parse_queues(server_doc({"rate": "50/s", "max_running": 4}), redis_url=redis_url)
    with ServerThread(create_app(settings)) as srv:
        config = Config(server=ServerConfig(url=srv.url, api_key=Secret(WORKER_KEY)),
                        worker=WorkerConfig(queues=(QueueSpec("emails", flow=FlowLimits(key_max_running=3)),)),
                        bootstrap=BootstrapConfig(retries=1, retry_delay=0.01))
        registration = await register(config)
        plan = await server_plan(config)  # what the agent runs with in server mode
    assert plan.flow == flow_limits(registration.queues, registration.flow, config.worker.queues)
    flow = plan.flow
    assert set(flow) == {"emails.high", "emails.low"}
    # the server's limits for the fleet, the agent config's where the server sets none
    assert flow["emails.high"].max_running == 4 and flow["emails.high"].key_max_running == 3


async def test_http_enqueue_sets_the_key_the_dequeue_limits(redis_url):
    """A task enqueued over HTTP with the rundown-key header is limited by its key, like one
    from the Python client or a Go client's asynq.Header."""
    import redis.asyncio as aioredis
    from starlette.testclient import TestClient

    from agent.broker import Broker
    from agent.broker.flow import FlowControl

    client_key = "client-key-0123456789"
    doc = server_doc({})
    doc["api_keys"].append({"name": "producer", "key": client_key, "role": "client"})
    settings = parse_queues(doc, redis_url=redis_url)
    with TestClient(create_app(settings)) as http:
        for i in range(3):
            for tenant in ("A", "B"):
                resp = http.post("/tasks", headers={"Authorization": f"Bearer {client_key}"},
                                 json={"type": "t", "queue": "emails.high", "task_id": f"{tenant}{i}",
                                       "headers": {"rundown-key": tenant}})
                assert resp.status_code == 201, resp.text
    broker = Broker(aioredis.Redis.from_url(redis_url))
    try:
        broker.flow = FlowControl({"emails.high": FlowLimits(key_max_running=1)})
        tasks, _ = await broker.dequeue("emails.high", count=10)
    finally:
        await broker.close()
    assert sorted(t.id for t in tasks) == ["A0", "B0"]

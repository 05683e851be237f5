"""The ops plane of a running agent: readiness and metrics through starting, ready,
draining, and a Redis outage."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from agent.client import Client
from agent.local_redis import LocalRedis
from tests.agentproc import AgentProcess, local_config


def poll(agent: AgentProcess, path: str) -> httpx.Response | None:
    try:
        return agent.get(path)
    except httpx.HTTPError:
        return None


def wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.timeout(120)
def test_readiness_and_metrics_through_the_lifecycle_and_a_redis_outage(tmp_path):
    redis = LocalRedis().start()
    try:
        config, port = local_config(tmp_path, redis.url, ["default"], startup_cmd="python slow_start.py",
                                    extra_env={"LOAD_SECONDS": "2"}, shutdown_timeout="3s")
        agent = AgentProcess(config, port, tmp_path / "agent.log")
        # starting: the endpoints answer before the children are ready
        threading.Thread(target=lambda: agent.start(timeout=60), daemon=True).start()
        starting = wait_for(lambda: (r := poll(agent, "/readyz")) is not None and r.status_code == 503 and r)
        assert "state is starting" in starting.json()["reasons"]
        assert poll(agent, "/healthz").status_code == 200
        wait_for(lambda: (r := poll(agent, "/readyz")) is not None and r.status_code == 200)
        metrics = poll(agent, "/metrics").text
        assert "rundown_ready 1.0" in metrics

        with Client(redis.url) as client:
            client.enqueue_many([("work", {}, {}) for _ in range(3)])
            wait_for(lambda: 'rundown_tasks_total{queue="default",state="deleted",type="work"} 3.0'
                     in poll(agent, "/metrics").text)

            # Redis down: not ready, with the reason; the agent itself stays alive
            redis_port = redis.port
            redis.stop()
            down = wait_for(lambda: (r := poll(agent, "/readyz")) is not None and r.status_code == 503 and r)
            assert any("redis unreachable" in reason for reason in down.json()["reasons"])
            assert poll(agent, "/healthz").status_code == 200
            wait_for(lambda: 'rundown_redis_errors_total{operation="dequeue"}' in poll(agent, "/metrics").text)
            redis = LocalRedis(port=redis_port).start()
            wait_for(lambda: (r := poll(agent, "/readyz")) is not None and r.status_code == 200, timeout=30)

        # draining: a long task keeps the agent draining; readiness says so
        with Client(redis.url) as client:
            client.enqueue("work", {"seconds": 2.5})
            wait_for(lambda: poll(agent, "/status").json()["in_flight"])
            agent.signal(signal.SIGTERM)
            draining = wait_for(lambda: (r := poll(agent, "/readyz")) is not None and r.status_code == 503 and r)
            assert "state is draining" in draining.json()["reasons"]
            assert "rundown_ready 0.0" in poll(agent, "/metrics").text
            assert agent.wait(30) == 0
    finally:
        redis.stop()

"""The dashboard's actions against a real agent at work, and the dashboard without its Redis.

A failure group retried (twice, as a double click) while an agent drains the same queue: every
task runs exactly once. A Redis that goes away: the pages answer 503 with the reason, the
sampler keeps going, nothing leaks a traceback.
"""

from __future__ import annotations

import time
import warnings

import redis

from agent.broker import keys
from agent.local_redis import LocalRedis
from agent.server import create_app, parse_queues
from bench.dashboard_seed import seed_tasks
from tests.agentproc import local_config, spawn_agent, wait_until
from tests.test_dashboard import ADMIN_KEY, Q, doc

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_group_retry_while_an_agent_drains_runs_each_task_once(tmp_path, redis_url, r):
    record = tmp_path / "runs.txt"
    group = seed_tasks(r, Q, 1500, "archived", id_prefix="g", task_type=lambda i: "record",
                       error=lambda i: f"upstream 503 after {i} ms", payload=lambda i: b"{}")
    busy = seed_tasks(r, Q, 1500, "pending", id_prefix="p", task_type=lambda i: "record",
                      payload=lambda i: b"{}")
    config, port = local_config(tmp_path, redis_url, [Q], concurrency=2, processes=2,
                                extra_env={"RECORD_FILE": str(record)})
    agent = spawn_agent(config, port, tmp_path / "agent.log")
    try:
        agent.wait_ready(timeout=60)
        wait_until(lambda: int(r.get(keys.processed_total(Q)) or 0) > 0, timeout=30,
                   what="the agent at work")
        with TestClient(create_app(parse_queues(doc(), redis_url=redis_url))) as http:
            form = {"op": "retry", "queue": Q, "type": "record", "error": "upstream <n> after <n> ms"}
            first = http.post("/dashboard/failures/action", headers=ADMIN, data=form)
            again = http.post("/dashboard/failures/action", headers=ADMIN, data=form)  # a double click
        assert "1,500 tasks moved to pending" in first.text, first.text
        assert "0 tasks moved to pending" in again.text, again.text
        wait_until(lambda: record.exists() and len(record.read_text().split()) >= 3000, timeout=90,
                   what="every task run")
        time.sleep(0.5)  # a duplicate would land now
        runs = record.read_text().split()
        assert sorted(runs) == sorted(group + busy)  # each once: none twice, none lost
        assert r.zcard(keys.archived(Q)) == 0 and r.llen(keys.pending(Q)) == 0
    finally:
        assert agent.stop() == 0


def test_pages_answer_503_while_redis_is_down_and_the_sampler_goes_on():
    server = LocalRedis().start()
    try:
        with TestClient(create_app(parse_queues(doc(), redis_url=server.url))) as http:
            client = redis.Redis.from_url(server.url)
            seed_tasks(client, Q, 5, "archived", error=lambda i: "boom")
            client.close()
            assert http.get("/dashboard/", headers=ADMIN).status_code == 200
            server.stop()
            for path in ("/dashboard/", "/dashboard/tasks?error=boom", "/dashboard/failures",
                         f"/dashboard/task?queue={Q}&id=t-00000000"):
                resp = http.get(path, headers=ADMIN)
                assert resp.status_code == 503 and "Redis is unavailable" in resp.text, (path, resp.text)
                assert "Traceback" not in resp.text
            resp = http.post("/dashboard/tasks/action", headers=ADMIN, data={"op": "retry", "task": f"{Q}\nt-1"})
            assert resp.status_code == 503
            sampler = http.app.state.dashboard_sampler
            time.sleep(2.5)  # a sample fails meanwhile
            assert sampler._task is not None and not sampler._task.done()
    finally:
        server.stop()

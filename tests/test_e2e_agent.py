"""End to end: ``rundown-agent -config local.yml`` as a real process, real Redis, real children."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import psutil
import pytest

from agent.broker import DuplicateTaskError, keys
from agent.client import Client
from tests.agentproc import AgentProcess, local_config, wait_until


@pytest.fixture
def client(redis_url):
    with Client(redis_url) as c:
        yield c


@pytest.fixture
def start_agent(tmp_path, redis_url):
    agents: list[AgentProcess] = []

    def start(queues=("default",), **kwargs) -> AgentProcess:
        config, port = local_config(tmp_path, redis_url, list(queues), **kwargs)
        agent = AgentProcess(config, port, tmp_path / f"agent-{port}.log").start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


def test_weighted_queues_complete_with_results(start_agent, client, r):
    queues = {"critical": 6, "default": 3, "low": 1}
    batch = [("stamp", {"n": i}, {"queue": q, "retention": 600}) for q in queues for i in range(334)]
    infos = client.enqueue_many(batch)
    agent = start_agent([{"name": q, "weight": w} for q, w in queues.items()], concurrency=8)
    ids = [(i.queue, i.id) for i in infos]
    wait_until(lambda: sum(r.zcard(keys.completed(q)) for q in queues) == len(ids), timeout=60)
    results = []
    for queue, task_id in ids:
        info = client.get_task(queue, task_id)
        assert info.state == "completed"
        result = info.result_json()
        assert result["id"] == task_id and result["queue"] == queue
        results.append(result)
    results.sort(key=lambda x: x["t"])
    window = Counter(x["queue"] for x in results[:450])  # all three queues still had a backlog
    shares = {q: window[q] / 450 for q in queues}
    for queue, weight in queues.items():
        # each dequeue draws its queue by weight: within 4 binomial standard deviations
        # (a false alarm about once in 15,000 runs), and the order of the weights kept
        p = weight / sum(queues.values())
        assert abs(shares[queue] - p) <= 4 * (p * (1 - p) / 450) ** 0.5, shares
    assert shares["critical"] > shares["default"] > shares["low"], shares
    assert r.get(keys.processed_total("critical")) == b"334"
    status = agent.get("/status").json()
    assert status["state"] == "ready" and status["queues"]["critical"]["weight"] == 6


def test_retries_then_archive_with_error_text(start_agent, client, r):
    start_agent()
    info = client.enqueue("retry_fast", {"why": "upstream down"}, max_retry=2)
    wait_until(lambda: r.zscore(keys.archived("default"), info.id) is not None, timeout=20)
    archived = client.get_task("default", info.id)
    assert archived.retried == 2 and archived.last_error == "attempt 3 failed: upstream down"
    assert r.get(keys.failed_total("default")) == b"3"


def test_scheduled_task_runs_on_time(start_agent, client, r):
    start_agent()
    before = time.time()
    info = client.enqueue("stamp", {}, process_in=3, retention=60)
    done = client.wait("default", info.id, timeout=15)
    ran_at = done.result_json()["t"] / 1e9
    assert info.next_process_at <= ran_at < info.next_process_at + 2.0, (before, info.next_process_at, ran_at)


def test_unique_task_runs_once(start_agent, client, r, tmp_path):
    record = tmp_path / "runs.txt"
    start_agent(extra_env={"RECORD_FILE": str(record)})
    first = client.enqueue("record", {"x": 1}, unique_ttl=60, retention=60)
    with pytest.raises(DuplicateTaskError):
        client.enqueue("record", {"x": 1}, unique_ttl=60)
    client.wait("default", first.id, timeout=10)
    assert record.read_text().split() == [first.id]


def test_sigterm_leaves_nothing_active_and_loses_nothing(start_agent, client, r, tmp_path):
    record = tmp_path / "runs.txt"
    agent = start_agent(extra_env={"RECORD_FILE": str(record)}, concurrency=4, shutdown_timeout="0.5s")
    infos = client.enqueue_many([("record", {"seconds": 0.3}, {}) for _ in range(40)])
    wait_until(lambda: record.exists() and len(record.read_text().split()) >= 4)
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0
    assert r.llen(keys.active("default")) == 0 and r.zcard(keys.lease("default")) == 0
    pending = {x.decode() for x in r.lrange(keys.pending("default"), 0, -1)}
    done = int(r.get(keys.processed_total("default")) or 0)
    assert len(pending) + done == len(infos)  # every task is either done or back in pending
    assert not list(r.scan_iter("asynq:servers:*")) and not list(r.scan_iter("asynq:workers:*"))
    assert r.zcard(keys.ALL_SERVERS) == 0
    assert "draining" in agent.output()


@pytest.mark.timeout(300)
def test_kill_9_of_one_agent_loses_nothing(start_agent, client, r, tmp_path):
    record = tmp_path / "runs.txt"
    env = {"RECORD_FILE": str(record)}
    victim = start_agent(extra_env=env, concurrency=4)
    survivor = start_agent(extra_env=env, concurrency=4)
    infos = client.enqueue_many([("record", {"seconds": 0.2}, {"retention": 600}) for _ in range(60)])
    wait_until(lambda: record.exists() and len(record.read_text().split()) >= 10)
    victim.kill()
    victim_children = [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == victim.pid]
    # The victim's leases run out (10 s) and the survivor's recoverer (every 1 s, 2 s after
    # expiry) puts its tasks back at the head of pending: re-run about 12 s after the kill.
    wait_until(lambda: r.zcard(keys.completed("default")) == len(infos), timeout=240, interval=0.5)
    runs = Counter(record.read_text().split())
    assert set(runs) == {i.id for i in infos}
    assert sum(n - 1 for n in runs.values()) <= 4  # duplicates only for tasks in flight at the kill
    assert survivor.get("/readyz").status_code == 200
    assert not [p for p in victim_children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_one_shot_runs_concurrency_processes_at_once_and_drains(start_agent, client, r):
    agent = start_agent(concurrency=3, mode="one_shot", startup_cmd="python e2e_worker.py --once",
                        shutdown_timeout="10s")
    infos = client.enqueue_many([("sleep", {"seconds": 0.6}, {"retention": 600}) for _ in range(9)])
    wait_until(lambda: r.zcard(keys.completed("default")) == 9, timeout=30)
    runs = [json.loads(client.get_task("default", i.id).result) for i in infos]
    assert len({run["pid"] for run in runs}) == 9  # a fresh process per task
    most = max(sum(1 for o in runs if o["start"] <= run["start"] < o["end"]) for run in runs)
    assert most == 3  # concurrency 3: three processes at once, never more
    slow = client.enqueue("sleep", {"seconds": 2}, retention=600)
    wait_until(lambda: r.llen(keys.active("default")) == 1)
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    assert client.get_task("default", slow.id).state == "completed"  # drained, not cut short


def test_pause_and_unpause(start_agent, client, r):
    start_agent()
    r.set(keys.paused("default"), int(time.time()))
    info = client.enqueue("stamp", {}, retention=60)
    time.sleep(2.0)
    assert client.get_task("default", info.id).state == "pending"
    r.delete(keys.paused("default"))
    assert client.wait("default", info.id, timeout=5).state == "completed"


def test_idle_agent_uses_almost_no_cpu(start_agent):
    agent = start_agent(queues=("a", "b", "c"))
    time.sleep(2.0)
    proc = psutil.Process(agent.pid)
    family = [proc, *proc.children(recursive=True)]
    before = sum(p.cpu_times().user + p.cpu_times().system for p in family)
    time.sleep(10.0)
    after = sum(p.cpu_times().user + p.cpu_times().system for p in family)
    assert (after - before) / 10.0 < 0.01, f"idle CPU {(after - before) * 10:.2f}%"


def test_metrics_and_readiness_through_a_cycle(start_agent, client, r):
    agent = start_agent()
    infos = client.enqueue_many([("stamp", {}, {}) for _ in range(5)])
    wait_until(lambda: r.get(keys.processed_total("default")) == b"5")
    metrics = agent.get("/metrics").text
    assert 'rundown_tasks_total{queue="default",state="deleted",type="stamp"} 5.0' in metrics
    assert "rundown_task_duration_seconds_bucket" in metrics
    assert agent.get("/healthz").json()["ok"] is True
    assert json.loads(agent.get("/readyz").text)["ready"] is True
    assert len(infos) == 5


def test_heartbeat_lists_the_agent_and_its_active_tasks(start_agent, client, redis_url):
    from agent.inspect import Inspector

    agent = start_agent(queues=[{"name": "default", "weight": 2}, "low"], concurrency=7,
                        processes="auto")
    info = client.enqueue("sleep", {"seconds": 8})
    inspector = Inspector.from_url(redis_url)

    def listed():
        servers = inspector.servers()
        return servers if servers and servers[0].active_workers else None

    wait_until(listed, timeout=15, interval=0.2)
    [server] = inspector.servers()
    assert (server.pid, server.concurrency, server.status) == (agent.pid, 7, "active")
    assert server.queues == {"default": 2, "low": 1} and server.active_worker_count == 1
    assert server.active_workers[0].task_id == info.id
    assert agent.stop() == 0
    assert inspector.servers() == []


def test_second_signal_cuts_the_drain_short_and_still_requeues(start_agent, client, r):
    agent = start_agent(shutdown_timeout="60s")
    info = client.enqueue("sleep", {"seconds": 30})
    # its handler runs (a task still waiting in the child would go back at once, uncut)
    wait_until(lambda: [t["running"] for t in agent.get("/status").json()["in_flight"]] == [True])
    began = time.monotonic()
    agent.signal(signal.SIGTERM)
    time.sleep(0.5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.output()[-3000:]
    assert time.monotonic() - began < 15
    assert r.lrange(keys.pending("default"), 0, -1) == [info.id.encode()]
    assert client.get_task("default", info.id).retried == 0


def test_a_signal_after_the_drain_finished_does_not_kill_the_agent(start_agent):
    """A stop signal that arrives while the agent exits (its drain done, its event loop gone)
    is ignored: the exit code stays 0 instead of death by SIGTERM."""
    agent = start_agent()
    agent.signal(signal.SIGTERM)
    wait_until(lambda: "stopped" in agent.output() or agent.proc.poll() is not None, timeout=20)
    for _ in range(20):  # through the rest of the exit
        if agent.proc.poll() is not None:
            break
        agent.signal(signal.SIGTERM)
        time.sleep(0.01)
    assert agent.wait(20) == 0, agent.output()[-3000:]


def test_sigtstp_stops_taking_new_tasks(start_agent, client, r):
    agent = start_agent()
    agent.signal(signal.SIGTSTP)
    wait_until(lambda: agent.get("/status").json()["state"] == "paused")
    info = client.enqueue("stamp", {})
    time.sleep(1.5)
    assert client.get_task("default", info.id).state == "pending"
    assert agent.get("/readyz").status_code == 503

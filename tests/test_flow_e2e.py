"""Flow control across a fleet: real agents as subprocesses on one real Redis (the issue's
figures). Handlers record their start and end times; the limits are judged from those."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from agent.broker import keys
from agent.client import Client
from tests.agentproc import APPS, AgentProcess, local_config, spawn_agent, wait_until

Q = "flow"


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_agents(tmp_path: Path, redis_url: str, queue: dict, count: int, record: Path, *,
                 concurrency: int = 4) -> list[AgentProcess]:
    agents = []
    for i in range(count):
        config, port = local_config(tmp_path, redis_url, [queue], concurrency=concurrency,
                                    startup_cmd="python flow_worker.py", app_dir=APPS,
                                    processes="auto", extra_env={"RECORD_FILE": str(record)})
        agents.append(AgentProcess(config, port, tmp_path / f"agent{i}.log"))
    agents = [spawn_agent(a.config, a.port, a.log_path) for a in agents]  # together: they share
    for agent in agents:                                                   # the queue from the start
        agent.wait_ready(60)
    return agents


def stop_all(agents: list[AgentProcess]) -> None:
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.signal()
    for agent in agents:
        if agent.proc is not None:
            agent.wait(30)


def enqueue(redis_url: str, items: list[tuple[str, dict, dict]]) -> None:
    with Client(redis_url) as client:
        for start in range(0, len(items), 500):
            results = client.enqueue_many(items[start:start + 500])
            assert not [r for r in results if isinstance(r, Exception)]


def most_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in events:  # an end sorts before a start at the same instant
        now += step
        best = max(best, now)
    return best


def intervals(recs: list[dict], key: str | None = None) -> list[tuple[float, float]]:
    starts = {r["id"]: r["t"] for r in recs if r["ev"] == "start" and (key is None or r["key"] == key)}
    ends = {r["id"]: r["t"] for r in recs if r["ev"] == "end" and r["id"] in starts}
    return [(starts[i], ends.get(i, float("inf"))) for i in starts]


class ActiveSampler(threading.Thread):
    """The queue's active list length, sampled every 20 ms while the test runs."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url)
        self.most = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.most = max(self.most, self.client.llen(keys.active(Q)))


def test_four_agents_share_one_rate(tmp_path, redis_url):
    """4 agents on one queue limited to 50/s, 3,000 no-op tasks: no 1 s window above 55 tasks
    started, mean rate >= 47/s, no retries, nothing in active beyond what runs."""
    record = tmp_path / "record.jsonl"
    r = redis.Redis.from_url(redis_url)
    enqueue(redis_url, [("noop", {}, {"queue": Q, "max_retry": 0}) for _ in range(3000)])
    sampler = ActiveSampler(redis_url)
    sampler.start()
    agents = start_agents(tmp_path, redis_url, {"name": Q, "rate": "50/s"}, 4, record, concurrency=8)
    try:
        wait_until(lambda: len(records(record)) >= 3000, timeout=150, interval=0.5, what="3,000 tasks run")
        wait_until(lambda: r.llen(keys.pending(Q)) == 0 and r.llen(keys.active(Q)) == 0, timeout=10)
        statuses = [a.get("/status").json() for a in agents]
    finally:
        sampler.stop.set()
        stop_all(agents)
    starts = [x["t"] for x in records(record) if x["ev"] == "start"]
    assert len(starts) == 3000 and len({x["id"] for x in records(record)}) == 3000  # each once
    window = most_in_window(starts, 1.0)
    mean = (len(starts) - 1) / (max(starts) - min(starts))
    print(f"\n50/s across 4 agents: most started in a 1 s window {window}, mean {mean:.2f}/s, "
          f"most in active {sampler.most}")
    assert window <= 55
    assert mean >= 47
    assert r.zcard(keys.retry(Q)) == 0 and r.zcard(keys.archived(Q)) == 0
    assert sampler.most <= 8  # no-op tasks: only the few taken in one fetch, never the backlog
    # every agent took its share (the limit is the fleet's, not each agent's)
    assert all(s["queues"][Q]["flow"]["rate"] == "50/s" for s in statuses)
    assert len({x["pid"] for x in records(record)}) >= 4


def test_max_running_across_three_agents(tmp_path, redis_url):
    """max_running 4 across 3 agents (12 slots) with 1 s tasks: never more than 4 running,
    and a slot is taken again within 1 s of a task's end."""
    record = tmp_path / "record.jsonl"
    agents = start_agents(tmp_path, redis_url, {"name": Q, "max_running": 4}, 3, record, concurrency=4)
    try:
        enqueue(redis_url, [("sleep", {"seconds": 1}, {"queue": Q}) for _ in range(20)])
        wait_until(lambda: sum(x["ev"] == "end" for x in records(record)) >= 20, timeout=60,
                   what="20 tasks of 1 s")
    finally:
        stop_all(agents)
    recs = records(record)
    spans = intervals(recs)
    assert len(spans) == 20
    most = overlap(spans)
    starts = sorted(s for s, _ in spans)
    ends = sorted(e for _, e in spans)
    # each end while tasks still waited: the next start within 1 s
    gaps = [min(s for s in starts if s >= e) - e for e in ends if sum(s >= e for s in starts)]
    print(f"\nmax_running 4, 3 agents: most running {most}, slowest slot reuse {max(gaps):.3f}s, "
          f"agents used {len({x['pid'] for x in recs})} children")
    assert most <= 4
    assert max(gaps) < 1.0
    assert most == 4  # the limit is used, not just respected


def test_key_fairness_a_big_tenant_does_not_delay_a_small_one(tmp_path, redis_url):
    """key_max_running 5, 2 agents: tenant A enqueues 5,000 tasks, then tenant B 50. A never has
    more than 5 running; B's 50 finish within 3x the time they take alone."""
    record = tmp_path / "record.jsonl"
    agents = start_agents(tmp_path, redis_url, {"name": Q, "key_max_running": 5}, 2, record, concurrency=8)

    def tenant(name: str, n: int) -> list[tuple[str, dict, dict]]:
        return [("sleep", {"seconds": 0.1, "key": name}, {"queue": Q, "headers": {"rundown-key": name}})
                for _ in range(n)]

    def b_done(n: int) -> bool:
        return sum(x["ev"] == "end" and x["key"] == "B" for x in records(record)) >= n

    try:
        t0 = time.time()
        enqueue(redis_url, tenant("B", 50))
        wait_until(lambda: b_done(50), timeout=60, what="B alone")
        alone = time.time() - t0
        enqueue(redis_url, tenant("A", 5000))
        wait_until(lambda: sum(x["key"] == "A" for x in records(record)) >= 20, timeout=30, what="A running")
        t1 = time.time()
        enqueue(redis_url, tenant("B", 50))
        wait_until(lambda: b_done(100), timeout=60, what="B beside A")
        beside = time.time() - t1
        time.sleep(1.0)  # A keeps running meanwhile
    finally:
        stop_all(agents)
    recs = records(record)
    a_most, b_most = overlap(intervals(recs, "A")), overlap(intervals(recs, "B"))
    print(f"\nkey fairness: B's 50 alone {alone:.2f}s, beside A's 5,000 {beside:.2f}s "
          f"({beside / alone:.2f}x); most running A {a_most}, B {b_most}")
    assert a_most <= 5 and b_most <= 5
    assert beside <= 3 * alone
    r = redis.Redis.from_url(redis_url)
    # A's backlog waits in asynq's pending list, where asynq's tools see it
    assert r.llen(keys.pending(Q)) > 4000


def test_a_killed_agents_slots_come_back_with_recovery(tmp_path, redis_url):
    """max_running 2: agent 1 holds both slots with long tasks and is SIGKILLed; agent 2, held
    by the limit meanwhile, starts tasks once recovery frees the slots (10-13 s)."""
    record = tmp_path / "record.jsonl"
    queue = {"name": Q, "max_running": 2}
    first = start_agents(tmp_path, redis_url, queue, 1, record, concurrency=4)[0]
    enqueue(redis_url, [("sleep", {"seconds": 60, "key": "long"}, {"queue": Q, "max_retry": 0})
                        for _ in range(2)])
    wait_until(lambda: sum(x["ev"] == "start" for x in records(record)) == 2, timeout=20, what="2 long tasks")
    enqueue(redis_url, [("sleep", {"seconds": 0.1, "key": "short"}, {"queue": Q}) for _ in range(3)])
    second = start_agents(tmp_path, redis_url, queue, 1, record, concurrency=4)[0]
    try:
        time.sleep(1.0)
        assert not [x for x in records(record) if x["key"] == "short"]  # held by max_running
        killed = time.time()
        first.kill()
        wait_until(lambda: [x for x in records(record) if x["key"] == "short"], timeout=30,
                   what="a short task started after the kill")
        back = min(x["t"] for x in records(record) if x["key"] == "short") - killed
        status = second.get("/status").json()["queues"][Q]["flow"]
    finally:
        stop_all([second])
        for child in {x["pid"] for x in records(record) if x["key"] == "long"}:
            with contextlib.suppress(ProcessLookupError):  # the reaper kills them; be sure
                os.kill(child, signal.SIGKILL)
    print(f"\nSIGKILLed agent's max_running slots back after {back:.1f}s")
    assert back <= 16.0
    assert status["max_running"] == 2 and status["tokens"] is None
    assert 1 <= status["running"] <= 2


@pytest.fixture(autouse=True)
def _fail_fast_on_missing_app():
    assert (APPS / "flow_worker.py").exists()


def test_a_throttled_queue_is_not_polled(tmp_path, redis_url):
    """A queue out of tokens is asked again when its next token is due, not in a loop: at 2/s
    with a backlog, the agent makes about one throttled fetch per token and uses little CPU."""
    import psutil

    record = tmp_path / "record.jsonl"
    enqueue(redis_url, [("noop", {}, {"queue": Q}) for _ in range(200)])
    agent = start_agents(tmp_path, redis_url, {"name": Q, "rate": "2/s"}, 1, record, concurrency=4)[0]
    try:
        process = psutil.Process(agent.pid)
        time.sleep(1.0)
        cpu0, t0, n0 = sum(process.cpu_times()[:2]), time.monotonic(), len(records(record))
        time.sleep(4.0)
        cpu = sum(process.cpu_times()[:2]) - cpu0
        started = len(records(record)) - n0
        seconds = time.monotonic() - t0
        metrics = agent.get("/metrics").text
    finally:
        stop_all([agent])
    fetches = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("rundown_flow_throttled_fetches_total{"))
    print(f"\n2/s for {seconds:.1f}s: {started} started, {fetches:.0f} throttled fetches in all, "
          f"agent CPU {cpu:.2f}s")
    assert 4 <= started <= 11  # 2/s for 4 s, burst 2 (fewer if a loaded machine delays a fetch)
    assert fetches <= 40  # about one per token (a loop would make thousands)
    assert cpu < 0.5 * seconds / 4  # under an eighth of a core


def test_server_mode_agents_enforce_the_queues_file_limits(tmp_path, redis_url):
    """rundown-server's queues file sets max_running 2 on a queue; two agents registered for it
    (4 slots each) never run more than 2 of its tasks together, and /status shows the limits."""
    import shutil
    import subprocess as sp

    import yaml

    from agent.local_redis import free_port
    from agent.server import ServerThread, create_app, parse_queues

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(APPS / "flow_worker.py", repo / "flow_worker.py")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "tasks"]):
        sp.run(["git", *args], cwd=repo, env=git_env, check=True, capture_output=True)
    record = tmp_path / "record.jsonl"
    key = "worker-key-0123456789abcdef"
    doc = {"api_keys": [{"name": "agents", "key": key, "role": "worker"}],
           "queues": {Q: {"max_running": 2, "rate": "100/s",
                          "deployment": {"git_url": repo.as_uri(), "branch": "main",
                                         "startup_cmd": "python flow_worker.py",
                                         "env_vars": {"RECORD_FILE": str(record)}}}}}
    agents = []
    with ServerThread(create_app(parse_queues(doc, redis_url=redis_url))) as server:
        for i in range(2):
            port = free_port()
            config = tmp_path / f"agent{i}.yml"
            config.write_text(yaml.safe_dump({
                "server": {"url": server.url, "api_key": key}, "worker": {"queues": [Q], "concurrency": 4},
                "deployment": {"dir": str(tmp_path / f"deployments{i}"), "venv": "none"},
                "ops": {"listen": f"127.0.0.1:{port}"}, "logging": {"format": "json"}}))
            agents.append(spawn_agent(config, port, tmp_path / f"agent{i}.log"))
        try:
            for agent in agents:
                agent.wait_ready(120)
            enqueue(redis_url, [("sleep", {"seconds": 0.5}, {"queue": Q}) for _ in range(8)])
            wait_until(lambda: sum(x["ev"] == "end" for x in records(record)) >= 8, timeout=60, what="8 tasks")
            flows = [a.get("/status").json()["queues"][Q]["flow"] for a in agents]
        finally:
            stop_all(agents)
    most = overlap(intervals(records(record)))
    print(f"\nserver mode, max_running 2 from the queues file, 2 agents x 4 slots: most running {most}")
    assert most == 2
    assert all(f["max_running"] == 2 and f["rate"] == "100/s" for f in flows)
    assert len({x["pid"] for x in records(record)}) >= 2


def test_an_agent_held_by_a_slow_rate_stays_ready(tmp_path, redis_url):
    """A queue at 2/m waits 30 s between tokens: the agent is held by its limit, not broken, so
    /readyz stays 200 past the 10 s that a failing dequeue would be allowed."""
    record = tmp_path / "record.jsonl"
    enqueue(redis_url, [("noop", {}, {"queue": Q}) for _ in range(10)])
    agent = start_agents(tmp_path, redis_url, {"name": Q, "rate": "2/m"}, 1, record)[0]
    try:
        wait_until(lambda: len(records(record)) >= 2, timeout=20, what="the burst of 2")
        time.sleep(12.0)
        ready = agent.get("/readyz")
        flow = agent.get("/status").json()["queues"][Q]["flow"]
    finally:
        stop_all([agent])
    assert len(records(record)) == 2  # the third token is due 30 s after the first
    assert ready.status_code == 200, ready.text
    assert flow["throttled"] == "rate" and flow["tokens"] == 0

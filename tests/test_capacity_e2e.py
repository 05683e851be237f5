"""End to end: the capacity model (worker.concurrency, worker.prefetch, deployment.processes,
deployment.threads) with a real ``rundown-agent -config`` process, real children running
tests/apps/capacity_worker.py, and the redis-server the test fixtures start.

Every bound here is measured by the test (wall clock, and the start / tick / end records the
handlers append to RECORD_FILE) or read from Redis. Bounds are generous for a small shared
machine, but each one is far below what a wrong model produces.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from agent.broker import keys
from agent.client import Client
from agent.inspect import Inspector
from tests.agentproc import (
    APPS,
    AgentProcess,
    kill_processes,
    local_config,
    pid_alive,
    processes_marked,
    spawn_agent,
    wait_until,
)

MARK = "CAPACITY_E2E_MARK"  # in every child's environment: finds them and what they start
WORKER = "capacity_worker.py"


# -- harness ---------------------------------------------------------------------------------


def capacity_config(tmp: Path, redis_url: str, *, queues=("default",), env=None,
                    worker=None, deployment=None) -> tuple[Path, int]:
    """A local-mode config running capacity_worker.py; ``worker`` and ``deployment`` are
    merged into their sections as given (new keys included)."""
    env_vars = dict(env or {})
    if os.environ.get("PYTHONPATH"):  # children import the same agent and task_sdk as we do
        env_vars.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
    deployment = dict(deployment or {})
    return local_config(tmp, redis_url, list(queues), startup_cmd=f"python {WORKER}",
                        app_dir=APPS, extra_env=env_vars,
                        processes=deployment.pop("processes", "auto"), worker=worker,
                        **deployment)


class Harness:
    """Starts agents for one test; records what their handlers did; cleans everything up."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp, self.redis_url = tmp, redis_url
        self.mark = uuid.uuid4().hex
        self.record_file = tmp / "records.jsonl"
        self.agents: list[AgentProcess] = []

    def config(self, *, queues=("default",), env=None, **sections) -> tuple[Path, int]:
        env = {MARK: self.mark, "RECORD_FILE": str(self.record_file), **(env or {})}
        return capacity_config(self.tmp, self.redis_url, queues=queues, env=env, **sections)

    def spawn(self, **kwargs) -> AgentProcess:
        """Start an agent without waiting for it to be ready."""
        config, port = self.config(**kwargs)
        agent = spawn_agent(config, port, self.tmp / f"agent-{port}.log")
        self.agents.append(agent)
        return agent

    def start(self, ready_timeout: float = 60.0, **kwargs) -> AgentProcess:
        agent = self.spawn(**kwargs)
        agent.wait_ready(ready_timeout)
        return agent

    def children(self) -> list[psutil.Process]:
        """Every live process carrying this test's mark (children and their descendants)."""
        return processes_marked(MARK, self.mark)

    def records(self) -> list[dict]:
        if not self.record_file.exists():
            return []
        lines = self.record_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def runs(self) -> list[dict]:
        """One entry per handler run: task id, pid, start, end (None if it never ended),
        last (its end, or its last sign of life)."""
        runs: dict[str, dict] = {}
        for rec in self.records():
            run = runs.setdefault(rec["run"], {"run": rec["run"], "id": rec["id"], "pid": rec["pid"],
                                               "start": None, "end": None, "last": rec["t"]})
            run["last"] = max(run["last"], rec["t"])
            if rec["ev"] == "start":
                run["start"] = rec["t"]
            elif rec["ev"] == "end":
                run["end"] = rec["t"]
        return sorted(runs.values(), key=lambda r: r["start"])

    def close(self) -> None:
        for agent in self.agents:
            if agent.proc is None or agent.proc.poll() is not None:
                continue
            try:
                agent.stop(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
        for agent in self.agents:
            if not agent._log.closed:
                agent._log.close()
        kill_processes(self.children())


@pytest.fixture
def harness(tmp_path, redis_url):
    h = Harness(tmp_path, redis_url)
    yield h
    h.close()


@pytest.fixture
def client(redis_url):
    with Client(redis_url) as c:
        yield c


def max_overlap(runs) -> int:
    """The most runs alive at one instant (a run lives from its start to its last record)."""
    events = []
    for run in runs:
        events += [(run["start"], 1), (run["last"], -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    alive = peak = 0
    for _, step in events:
        alive += step
        peak = max(peak, alive)
    return peak


SETTLED = ("completed", "archived", "retry")  # retry: failed and charged, waiting for backoff


def settled(client, infos) -> dict | None:
    """Every task's TaskInfo by id once all are completed, archived or in retry; else None."""
    out = {i.id: client.get_task(i.queue, i.id) for i in infos}
    return out if all(t.state in SETTLED for t in out.values()) else None


def final_states(client, infos, timeout: float) -> dict:
    """Wait until every task is completed, archived or failed into retry; their TaskInfo by id."""
    return wait_until(lambda: settled(client, infos), timeout=timeout,
                      what="all tasks completed, archived or in retry")


def sleeps(n: int, seconds: float, **options) -> list[tuple]:
    return [("sleep", seconds, {"retention": 600, **options}) for _ in range(n)]


# -- 1. capacity -----------------------------------------------------------------------------


def test_concurrency_8_runs_8_sync_handlers_at_once(harness, client):
    harness.start(worker={"concurrency": 8}, deployment={"processes": "auto"})
    began = time.monotonic()
    infos = client.enqueue_many(sleeps(8, 1.0))
    states = final_states(client, infos, timeout=20)
    elapsed = time.monotonic() - began
    assert {t.state for t in states.values()} == {"completed"}
    runs = harness.runs()
    assert len(runs) == 8
    assert elapsed <= 2.5, f"8 tasks of 1 s took {elapsed:.1f}s: they did not run at once"
    assert max_overlap(runs) == 8
    assert len({r["pid"] for r in runs}) == 8  # one sync thread per child: eight children


def test_concurrency_4_never_holds_more_than_4(harness, client, r):
    harness.start(worker={"concurrency": 4}, deployment={"processes": "auto"})
    began = time.monotonic()
    infos = client.enqueue_many(sleeps(40, 0.2))
    active = []
    while r.zcard(keys.completed("default")) < len(infos) and time.monotonic() - began < 30:
        active.append(r.llen(keys.active("default")))
        time.sleep(0.005)  # a task held one moment too long shows up within a few ms
    elapsed = time.monotonic() - began
    assert r.zcard(keys.completed("default")) == len(infos)
    over = sorted(n for n in active if n > 4)
    assert not over, f"active list above 4 in {len(over)} of {len(active)} samples: {over}"
    runs = harness.runs()
    assert len(runs) == 40 and max_overlap(runs) == 4
    assert elapsed <= 6.0, f"40 tasks of 0.2 s at concurrency 4 took {elapsed:.1f}s (ideal 2 s)"


# -- 2. a task's timeout counts from its handler's start -------------------------------------


def test_timeout_counts_from_handler_start_with_8_children(harness, client):
    harness.start(worker={"concurrency": 8}, deployment={"processes": "auto"})
    infos = client.enqueue_many(sleeps(8, 1.5, timeout=4, max_retry=3))
    states = final_states(client, infos, timeout=30)
    assert [(t.state, t.retried, t.last_error) for t in states.values()] == [("completed", 0, "")] * 8


def test_timeout_of_prefetched_tasks_starts_when_they_start(harness, client, r, redis_url):
    harness.start(worker={"concurrency": 1, "prefetch": 4},
                  deployment={"processes": 1, "threads": 1})
    inspector = Inspector.from_url(redis_url)
    infos = client.enqueue_many(sleeps(5, 1.5, timeout=2, max_retry=3))
    listed, active = [], []
    end = time.monotonic() + 30
    while not settled(client, infos) and time.monotonic() < end:
        listed.append(len([w for s in inspector.servers() for w in s.active_workers]))
        active.append(r.llen(keys.active("default")))
        time.sleep(0.1)
    inspector.close()
    states = final_states(client, infos, timeout=5)
    assert [(t.state, t.retried, t.last_error) for t in states.values()] == [("completed", 0, "")] * 5
    runs = harness.runs()
    assert len(runs) == 5 and max_overlap(runs) == 1
    assert max(active) <= 1 + 4  # running + prefetched
    assert max(listed, default=0) <= 1, f"the heartbeat listed {max(listed)} workers: only running tasks belong there"


# -- 3. a timeout is blamed on the task that timed out only ---------------------------------


def test_timeout_blames_only_the_hung_task_not_the_prefetched_ones(harness, client):
    harness.start(worker={"concurrency": 1, "prefetch": 6},
                  deployment={"processes": 1, "threads": 1})
    hang = client.enqueue("hang", None, timeout=2, max_retry=0)
    quick = client.enqueue_many([("quick", None, {"retention": 600, "max_retry": 3})] * 6)
    states = final_states(client, [hang, *quick], timeout=40)
    hung = states[hang.id]
    assert hung.state == "archived" and "timeout" in hung.last_error.lower(), hung
    assert [(states[i.id].state, states[i.id].retried, states[i.id].last_error) for i in quick] == \
        [("completed", 0, "")] * 6


def test_timeout_requeues_sibling_threads_without_charging_them(harness, client):
    harness.start(worker={"concurrency": 4}, deployment={"processes": 1, "threads": 4})
    hang = client.enqueue("hang", None, timeout=2, max_retry=0)
    sleepers = client.enqueue_many(sleeps(3, 3.0, max_retry=3))
    states = final_states(client, [hang, *sleepers], timeout=40)
    hung = states[hang.id]
    assert hung.state == "archived" and "timeout" in hung.last_error.lower(), hung
    assert [(states[i.id].state, states[i.id].retried) for i in sleepers] == [("completed", 0)] * 3
    runs = harness.runs()
    [hang_run] = [run for run in runs if run["id"] == hang.id]
    for info in sleepers:
        mine = [run for run in runs if run["id"] == info.id]  # by start time
        assert mine[0]["start"] - hang_run["start"] < 1.0, \
            f"sleeper {info.id} did not run beside the hung task: {mine} vs {hang_run}"
        # cut short when the child was killed (or let finish), then complete exactly once
        assert [run["end"] is not None for run in mine] == [False] * (len(mine) - 1) + [True], mine


# -- 4. timeouts are enforced on time -------------------------------------------------------


def test_timeout_fails_the_task_on_time_and_kills_its_child(harness, client):
    harness.start(worker={"concurrency": 1})
    info = client.enqueue("hang", None, timeout=2, max_retry=0)

    def failed_at():
        task = client.get_task("default", info.id)
        return time.time() if task.state == "archived" else None

    failed = wait_until(failed_at, timeout=30, interval=0.02, what="the hung task archived")
    [run] = harness.runs()
    assert failed - run["start"] <= 2.75, f"failure recorded {failed - run['start']:.2f}s after start"
    assert "timeout" in client.get_task("default", info.id).last_error.lower()
    wait_until(lambda: not pid_alive(run["pid"]), timeout=5, interval=0.02, what="child gone")
    assert time.time() - failed <= 1.0 + 0.1  # gone within 1 s of the failure (+ polling)


# -- 5. a drain never lets a task run twice at once -----------------------------------------


def test_drain_then_requeue_never_runs_a_task_twice_at_once(harness, client):
    a = harness.start(worker={"concurrency": 4, "shutdown_timeout": "1s"},
                      deployment={"processes": "auto"})
    infos = client.enqueue_many(sleeps(4, 5.0, max_retry=3))
    wait_until(lambda: len(harness.runs()) == 4, timeout=15, what="4 tasks running on A")
    signalled = time.monotonic()
    a.signal(signal.SIGTERM)
    harness.spawn(worker={"concurrency": 4}, deployment={"processes": "auto"})
    code = a.wait(timeout=30)
    exited = time.monotonic() - signalled
    assert code == 0
    states = final_states(client, infos, timeout=60)
    assert {t.state for t in states.values()} == {"completed"}
    runs = harness.runs()
    by_task = defaultdict(list)
    for run in runs:
        by_task[run["id"]].append(run)
    for task_id, mine in by_task.items():
        for x, y in zip(mine, mine[1:], strict=False):
            assert x["last"] < y["start"], f"{task_id} ran twice at once: {x} and {y}"
        assert len([r for r in mine if r["end"] is not None]) == 1, f"{task_id} completed twice: {mine}"
    assert set(by_task) == {i.id for i in infos}
    assert exited <= 1.0 + 2.0, f"A exited {exited:.1f}s after SIGTERM (shutdown_timeout 1s)"


# -- 6. no orphans --------------------------------------------------------------------------


def _spawn_setsid(harness, client, tmp_path) -> tuple[int, int]:
    pid_file = tmp_path / "grandchild.pid"
    client.enqueue("spawn_setsid", {"pid_file": str(pid_file), "seconds": 300})
    wait_until(pid_file.exists, timeout=15, what="grandchild started")
    grandchild = int(pid_file.read_text())
    wait_until(lambda: os.getsid(grandchild) == grandchild, timeout=5, what="grandchild in its own session")
    [run] = harness.runs()
    return run["pid"], grandchild


def _alive_after(seconds: float, **pids: int) -> list[str]:
    """Which of ``pids`` (by name) are still alive once ``seconds`` have passed (returns as
    soon as none is)."""
    end = time.monotonic() + seconds
    while True:
        alive = [f"{name} {pid}" for name, pid in pids.items() if pid_alive(pid)]
        if not alive or time.monotonic() >= end:
            return alive
        time.sleep(0.05)


def test_sigkill_of_the_agent_leaves_no_orphans(harness, client, tmp_path):
    agent = harness.start(worker={"concurrency": 1})
    child, grandchild = _spawn_setsid(harness, client, tmp_path)
    agent.kill()
    alive = _alive_after(3.0, child=child, grandchild=grandchild)
    assert alive == [], f"alive 3 s after the agent was killed: {alive}"
    assert harness.children() == []


def test_sigterm_of_the_agent_leaves_no_orphans(harness, client, tmp_path):
    agent = harness.start(worker={"concurrency": 1, "shutdown_timeout": "1s"})
    child, grandchild = _spawn_setsid(harness, client, tmp_path)
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    alive = _alive_after(3.0, child=child, grandchild=grandchild)
    assert alive == [], f"alive 3 s after the agent exited: {alive}"
    assert harness.children() == []


# -- 7. the memory limit is enforced while a task runs ---------------------------------------


def test_memory_limit_kills_a_growing_task(harness, client):
    harness.start(worker={"concurrency": 1, "max_memory_per_child": "300MB"})
    info = client.enqueue("grow", {"mb": 1500, "step_seconds": 0.25, "sleep": 120}, max_retry=0)
    [run] = wait_until(harness.runs, timeout=15, what="grow started")
    states = None
    with contextlib.suppress(AssertionError):
        states = wait_until(lambda: settled(client, [info]), timeout=8.0)
    failed = time.time()
    grown = max((rec.get("mb", 0) for rec in harness.records()), default=0)
    assert states is not None, f"still {client.get_task('default', info.id).state} after {failed - run['start']:.0f}s at {grown} MB"
    task = states[info.id]
    assert task.state == "archived" and "memory limit exceeded" in task.last_error, task
    assert failed - run["start"] <= 8.0
    assert grown < 600, f"the child reached {grown} MB (limit 300 MB)"
    wait_until(lambda: not pid_alive(run["pid"]), timeout=3, what="the child killed")


# -- 8. SIGTERM while the children load ------------------------------------------------------


def test_sigterm_during_start_up_exits_quickly_without_children(harness):
    started = time.monotonic()
    agent = harness.spawn(worker={"concurrency": 2}, env={"LOAD_SECONDS": "40"})
    wait_until(harness.children, timeout=15, interval=0.05, what="a child loading")
    time.sleep(max(0.0, started + 1.0 - time.monotonic()))
    children = harness.children()
    signalled = time.monotonic()
    agent.signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        agent.wait(timeout=10)
    exited = time.monotonic() - signalled
    assert agent.proc.poll() is not None and exited <= 3.0, f"still running {exited:.1f}s after SIGTERM"
    wait_until(lambda: not any(pid_alive(p.pid) for p in children) and not harness.children(),
               timeout=1.0, what="no child left behind")


# -- 9. many queues do not mean many children ------------------------------------------------


def test_1000_queues_start_at_most_concurrency_children(harness, client):
    queues = [f"q{i:04d}" for i in range(1000)]  # the most a config may hold
    agent = harness.spawn(queues=queues, worker={"concurrency": 4}, deployment={"processes": "auto"})
    most = 0
    end = time.monotonic() + 90
    while True:
        workers = [p for p in harness.children() if WORKER in _cmdline(p)]
        most = max(most, len(workers))
        if most > 4:  # stop a runaway at once: 1,000 children would exhaust the machine
            agent.kill()
            pytest.fail(f"{most} children started for 1,000 queues at concurrency 4")
        if agent.proc.poll() is not None:
            pytest.fail(f"agent exited with {agent.proc.returncode}:\n{agent.output()[-3000:]}")
        try:
            if agent.get("/readyz").status_code == 200:
                break
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        assert time.monotonic() < end, "agent not ready within 90 s"
        time.sleep(0.1)
    info = client.enqueue("quick", None, queue="q0999", retention=600)
    assert client.wait("q0999", info.id, timeout=30).state == "completed"
    # the agent's task children (it may run helpers of its own, such as a reaper process)
    children = [p for p in psutil.Process(agent.pid).children(recursive=True) if WORKER in _cmdline(p)]
    assert 1 <= len(children) <= 4 and most <= 4


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


# -- 10. a killed agent's tasks are picked up quickly ----------------------------------------


@pytest.mark.slow
def test_tasks_of_a_killed_agent_restart_on_a_live_agent_within_15s(harness, client):
    a = harness.start(worker={"concurrency": 3, "shutdown_timeout": "1s"},
                      deployment={"processes": "auto"})
    infos = client.enqueue_many(sleeps(3, 30.0, max_retry=3))
    wait_until(lambda: len(harness.runs()) == 3, timeout=15, what="3 tasks running on A")
    a_children = {p.pid for p in psutil.Process(a.pid).children(recursive=True)}
    assert {r["pid"] for r in harness.runs()} <= a_children
    harness.start(worker={"concurrency": 3, "shutdown_timeout": "1s"},
                  deployment={"processes": "auto"})
    killed = time.time()
    a.kill()

    def restarted():
        later = [r for r in harness.runs() if r["start"] > killed and r["pid"] not in a_children]
        return later if {r["id"] for r in later} == {i.id for i in infos} else None

    later = wait_until(restarted, timeout=40, interval=0.2, what="all 3 tasks started again on B")
    for info in infos:
        first = min(r["start"] for r in later if r["id"] == info.id)
        assert first - killed <= 15.0, f"task {info.id} restarted {first - killed:.1f}s after the kill"

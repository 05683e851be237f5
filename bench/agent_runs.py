"""The agent under test: a real ``python -m agent.cli`` process in local mode.

Every drain follows the same steps: the queues are paused, N tasks are enqueued, the agent
starts and becomes ready, CPU is sampled, the queues are unpaused, and the harness polls the
asynq ``processed`` counters until all N are done. The rate is taken from the first observed
progress to the last, so start-up and the pause are not counted.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import redis
import yaml

from agent.broker import keys
from agent.local_redis import free_port
from bench.measure import (
    children_cpu_delta,
    own_cpu,
    process_cpu,
    sample_tree,
    summary_ms,
    system_busy_seconds,
)
from bench.procs import Processes, wait_until
from bench.workload import SMALL, BareProducer, enqueue_parallel

APP_DIR = Path(__file__).resolve().parent / "apps"
MB = 1024 * 1024


@dataclass
class Harness:
    """What every run needs: the process registry, Redis, and where to put files."""

    procs: Processes
    redis_url: str
    redis_pid: int
    workdir: Path  # temporary: configs, deployment dirs
    logdir: Path  # kept: logs of every process
    profile_with: str = ""  # "", "cprofile": wrap the agent (see bench/profiling.py)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=30)


AUTO = "auto"

#: The configuration recommended for short tasks (no-op to a few ms), chosen by measurement
#: among a few candidates (bench/README.md, "Choosing the short-task configuration"): every
#: no-op drain of the suite but the async one runs it.
SHORT_TASK = dict(concurrency=1, processes=1, threads=1, prefetch=256)


@dataclass
class AgentSetup:
    """One agent configuration, in the capacity model's terms: ``concurrency`` handlers run at
    once (``worker.concurrency``), in ``processes`` children (an int, or ``"auto"``: as many
    as concurrency needs) of ``threads`` sync handler threads each (``async_limit`` async
    handlers when every handler is async; None = the default, concurrency), and each child may
    hold ``prefetch`` tasks beyond its busy slots.

    A field set to None is left out of the config file (the agent's default applies): with
    ``threads``, ``async_limit`` and ``prefetch`` None and ``processes`` an int, the file is
    also valid for trees from before the capacity model (``bench.compare``)."""

    queues: list  # [(name, weight), ...]
    concurrency: int
    mode: str = "long_running"
    startup_cmd: str = "python noop_worker.py"
    processes: int | str | None = AUTO
    threads: int | None = 1
    async_limit: int | None = None
    prefetch: int | None = 0
    env: dict = field(default_factory=dict)
    one_shot_start: str | None = None  # one_shot: fork (the default) or exec

    @property
    def effective_async_limit(self) -> int:
        return self.async_limit or self.concurrency

    def capacity(self, children: int | None = None) -> dict:
        """The configuration as recorded in the results (``children``: as counted in a run)."""
        out = {"concurrency": self.concurrency, "processes": self.processes, "threads": self.threads,
               "async_limit": self.effective_async_limit, "prefetch": self.prefetch, "mode": self.mode}
        if children is not None:
            out["children"] = children
        return out

    def label(self, children: int | None = None) -> str:
        """Every figure's row label: e.g. ``concurrency 1: 1 process x 1 thread, async_limit 1,
        prefetch 127`` (``processes auto = 16`` once a run counted the children)."""
        if self.mode == "one_shot":
            how = f", by {self.one_shot_start}" if self.one_shot_start else ""
            return f"concurrency {self.concurrency}: one_shot (a process per task{how})"
        if self.threads is None and self.prefetch is None and self.async_limit is None:
            return (f"concurrency {self.concurrency}, processes {self.processes} "
                    "(without the capacity model's keys)")
        procs = self.processes
        if procs == AUTO:
            procs = "auto" + (f" = {children}" if children is not None else "")
        threads = 1 if self.threads is None else self.threads
        prefetch = 0 if self.prefetch is None else self.prefetch
        return (f"concurrency {self.concurrency}: processes {procs} x threads {threads}, "
                f"async_limit {self.effective_async_limit}, prefetch {prefetch}")


class AgentUnderTest:
    def __init__(self, h: Harness, setup: AgentSetup, name: str,
                 process_env: dict | None = None, cwd: Path | None = None) -> None:
        self.h, self.setup, self.name = h, setup, name
        self.process_env = dict(process_env or {})  # extra environment of the agent process
        # ``python -m`` puts its working directory first on sys.path, before PYTHONPATH: an
        # agent started from a checkout imports that checkout's ``agent`` whatever PYTHONPATH says
        self.cwd = cwd
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = h.logdir / f"agent-{name}.log"
        self.profile_path = h.logdir / f"agent-{name}.pstats"

    def config(self) -> Path:
        s = self.setup
        worker = {"queues": [{"name": q, "weight": w} for q, w in s.queues],
                  "concurrency": s.concurrency, "shutdown_timeout": "5s"}
        deployment = {"dir": str(self.h.workdir / f"deployment-{self.name}"), "path": str(APP_DIR),
                      "startup_cmd": s.startup_cmd, "venv": "none", "mode": s.mode, "env_vars": dict(s.env)}
        if s.prefetch is not None:
            worker["prefetch"] = s.prefetch
        if s.mode == "one_shot" and s.one_shot_start:
            deployment["one_shot_start"] = s.one_shot_start
        if s.mode != "one_shot":  # processes, threads and async_limit do not apply to one_shot
            for key in ("processes", "threads", "async_limit"):
                if getattr(s, key) is not None:
                    deployment[key] = getattr(s, key)
        cfg = {
            "redis": {"url": self.h.redis_url},
            "worker": worker,
            "deployment": deployment,
            "ops": {"listen": f"127.0.0.1:{self.port}"},
            "logging": {"level": "info", "format": "json"},
        }
        path = self.h.workdir / f"agent-{self.name}.yml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, timeout: float = 60.0, *, wait: bool = True) -> AgentUnderTest:
        argv = [sys.executable]
        if self.h.profile_with == "cprofile":
            argv += ["-m", "cProfile", "-o", str(self.profile_path)]
        argv += ["-m", "agent.cli", "-config", str(self.config())]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.process_env}
        self.proc = self.h.procs.spawn(argv, name=f"agent-{self.name}", log_path=self.log_path, env=env,
                                       cwd=self.cwd)
        if wait:  # else the caller waits for ``_ready`` (several agents starting at once)
            wait_until(self._ready, timeout, 0.05, f"agent {self.name} ready")
            self.h.procs.note_descendants(self.proc)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent {self.name} exited with {self.proc.returncode}; see {self.log_path}")
        try:
            status = self.status()
        except (httpx.HTTPError, ValueError):
            return False
        return status.get("state") == "ready" and all(e.get("healthy") for e in status["executors"].values())

    def status(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.port}/status", timeout=5.0).json()

    def task_children(self) -> tuple[list[int] | None, int | None]:
        """(PIDs of the children serving tasks, their handler slots) as the agent's /status
        reports them (a process tree would also count helpers such as the reaper); (None,
        None) if it cannot say."""
        try:
            status = self.status()
        except (httpx.HTTPError, ValueError):
            return None, None
        return _child_pids(status), status.get("slots")

    def task_child_pids(self) -> list[int]:
        """PIDs of the children serving tasks (not helper processes), per /status."""
        try:
            return _child_pids(self.status())
        except (httpx.HTTPError, ValueError):
            return []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[psutil.Process]:
        assert self.proc is not None
        return self.h.procs.note_descendants(self.proc)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.h.procs.stop(self.proc, grace=30.0)

    def log_lines(self) -> int:
        try:
            with open(self.log_path, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0


def _child_pids(status: dict) -> list[int]:
    pids = {c.get("pid") for e in status.get("executors", {}).values() for c in e.get("children", [])}
    return sorted(p for p in pids if p)


def _pause(r: redis.Redis, queues: list[str], on: bool) -> None:
    pipe = r.pipeline(transaction=False)
    for q in queues:
        if on:
            pipe.set(keys.paused(q), int(time.time()))
        else:
            pipe.delete(keys.paused(q))
    pipe.execute()


def leftovers(r: redis.Redis, queues: list[str]) -> dict:
    """Anything not completed: should be all zero after a drain."""
    pipe = r.pipeline(transaction=False)
    for q in queues:
        pipe.llen(keys.pending(q))
        pipe.llen(keys.active(q))
        pipe.zcard(keys.lease(q))
        pipe.zcard(keys.retry(q))
        pipe.zcard(keys.archived(q))
        pipe.get(keys.failed_total(q))
    vals = pipe.execute()
    names = ("pending", "active", "lease", "retry", "archived", "failed")
    out = dict.fromkeys(names, 0)
    for i, v in enumerate(vals):
        out[names[i % len(names)]] += int(v or 0)
    return out


@dataclass
class Progress:
    t_first: float = 0.0
    c_first: int = 0
    t_last: float = 0.0
    c_last: int = 0
    snapshot: list[int] | None = None


def watch_processed(r: redis.Redis, queues: list[str], n: int, *, timeout: float,
                    stall: float = 30.0, snapshot_at: float | None = None,
                    interval: float = 0.005, on_first=None) -> Progress:
    """Poll the processed counters until their sum reaches ``n``; ``on_first()`` runs at
    the first observed progress."""
    counters = [keys.processed_total(q) for q in queues]
    p = Progress()
    deadline = time.monotonic() + timeout
    last_change, last_total = time.monotonic(), -1
    while True:
        vals = [int(v or 0) for v in r.mget(counters)]
        now = time.perf_counter()
        total = sum(vals)
        if total and not p.t_first:
            p.t_first, p.c_first = now, total
            if on_first is not None:
                on_first()
        if snapshot_at is not None and p.snapshot is None and total >= snapshot_at * n:
            p.snapshot = vals
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        if total >= n:
            p.t_last, p.c_last = now, total
            return p
        if time.monotonic() > deadline:
            raise TimeoutError(f"drain incomplete after {timeout:.0f}s: {total}/{n} processed")
        if time.monotonic() - last_change > stall:
            raise TimeoutError(f"drain stalled for {stall:.0f}s at {total}/{n} processed")
        time.sleep(interval)


def drain(h: Harness, name: str, *, n: int, setup: AgentSetup, task_type: str = "noop",
          kind: str = SMALL, enqueue_procs: int = 1, min_rate: float = 500.0,
          snapshot_at: float | None = None, keep_agent: bool = False,
          on_running=None, enqueue=None) -> tuple[dict, AgentUnderTest | None]:
    """Enqueue n tasks over ``setup.queues`` (round robin; ``enqueue(url, n, queues, type)``
    instead of our client when given), then let one agent drain them."""
    r = h.redis()
    r.flushall()
    queues = [q for q, _ in setup.queues]
    _pause(r, queues, True)
    if enqueue is not None:
        enqueue_s = enqueue(h.redis_url, n, queues, task_type)
    else:
        enqueue_s = enqueue_parallel(h.redis_url, n, queues, task_type, kind, procs=enqueue_procs)
    agent = AgentUnderTest(h, setup, name).start()
    keep = False
    try:
        time.sleep(0.3)  # let start-up work settle before the CPU baseline
        start = sample_tree(agent.pid)
        redis_start = process_cpu(h.redis_pid)
        log_before = agent.log_lines()
        r.config_resetstat()
        _pause(r, queues, False)
        if on_running is not None:
            on_running(agent)
        first: dict = {}

        def at_first_progress() -> None:
            first["tree"] = sample_tree(agent.pid)
            first["redis"] = process_cpu(h.redis_pid)
            first["system"], first["own"] = system_busy_seconds(), own_cpu()

        progress = watch_processed(r, queues, n, timeout=60 + n / min_rate, snapshot_at=snapshot_at,
                                   on_first=at_first_progress)
        after = sample_tree(agent.pid)
        redis_after = process_cpu(h.redis_pid)
        system_after, own_after = system_busy_seconds(), own_cpu()
        child_pids, slots = agent.task_children()
        children = None if child_pids is None else len(child_pids)
        # RSS of the task children as /status lists them (none between one_shot tasks); of
        # every descendant when /status cannot say
        task_rss = (sum(after.children_rss.get(pid, 0) for pid in child_pids)
                    if child_pids is not None else sum(after.children_rss.values()))
        before, redis_before = first["tree"], first["redis"]
        seconds = progress.t_last - progress.t_first
        done = progress.c_last - progress.c_first
        span = max(after.t - before.t, 1e-9)
        agent_cpu = after.cpu - before.cpu
        child_cpu = children_cpu_delta(before, after)
        redis_cpu = redis_after - redis_before
        # CPU used by anything else on the machine meanwhile (a shared machine drifts)
        others = ((system_after - first["system"]) - agent_cpu - child_cpu - redis_cpu
                  - (own_after - first["own"]))
        result = {
            "n": n, "config": setup.label(children),
            # the configuration, and the children and handler slots the agent reported
            "capacity": {**setup.capacity(children), "slots": slots},
            "concurrency": setup.concurrency, "mode": setup.mode, "task_type": task_type,
            "app": setup.startup_cmd, "payload": kind, "queues": len(queues),
            "enqueue_seconds": round(enqueue_s, 3), "enqueue_per_s": round(n / enqueue_s, 1),
            "enqueue_procs": enqueue_procs,
            "drain_seconds": round(seconds, 3),
            "tasks_per_s": round(done / seconds, 1) if seconds > 0 else None,
            # CPU between the first observed progress and the last task, per task done then
            "agent_cpu_us_per_task": round(agent_cpu / done * 1e6, 2),
            "children_cpu_us_per_task": round(child_cpu / done * 1e6, 2),
            "redis_cpu_us_per_task": round(redis_cpu / done * 1e6, 2),
            "agent_cpu_util": round(agent_cpu / span, 3),
            "children_cpu_util": round(child_cpu / span, 3),
            "redis_cpu_util": round(redis_cpu / span, 3),
            "other_processes_cpu_util": round(max(0.0, others) / span, 3),
            # from ready to the end, start-up excluded: includes the pause and first batches
            "agent_cpu_us_per_task_whole_run": round((after.cpu - start.cpu) / n * 1e6, 2),
            "redis_cpu_us_per_task_whole_run": round((redis_after - redis_start) / n * 1e6, 2),
            "agent_rss_mb": round(after.rss / MB, 1),
            "agent_peak_rss_mb": round(after.peak_rss / MB, 1),
            "descendants": len(after.children_rss),  # every descendant process (helpers included)
            "descendants_rss_mb": round(sum(after.children_rss.values()) / MB, 1),
            "child_rss_mb": round(task_rss / MB, 1),
            "redis_commands_per_task": redis_commands(r, n),
            "leftover": leftovers(r, queues),
            "agent_log_lines_during_drain": agent.log_lines() - log_before,
        }
        if progress.snapshot is not None:
            result["weight_check"] = weight_check(setup.queues, progress.snapshot)
        keep = keep_agent
        return result, (agent if keep_agent else None)
    finally:
        if not keep:
            code = agent.stop()
            if code not in (0, None):
                print(f"warning: agent {name} exited with {code}; see {agent.log_path}", file=sys.stderr)
        r.close()


HARNESS_COMMANDS = {"mget", "config", "info"}  # the harness polls with MGET; DEL unpauses (1 call)


def redis_commands(r: redis.Redis, n: int) -> dict:
    """Redis commands per task since the last CONFIG RESETSTAT (the harness's own polling
    commands left out), with the Redis time each takes per task; commands inside Lua
    scripts are counted too (as asynq's would be)."""
    stats = r.info("commandstats")
    net = r.info("stats")
    out: dict = {}
    for name, data in sorted(stats.items(), key=lambda kv: -kv[1]["usec"]):
        command = name.removeprefix("cmdstat_")
        if command in HARNESS_COMMANDS:
            continue
        out[command] = {"calls": round(data["calls"] / n, 3), "redis_us": round(data["usec"] / n, 2)}
    out["net_in_bytes"] = round(net.get("total_net_input_bytes", 0) / n, 1)
    out["net_out_bytes"] = round(net.get("total_net_output_bytes", 0) / n, 1)
    return out


def weight_check(queues: list[tuple[str, int]], counts: list[int]) -> dict:
    """Share of the work done by the higher-weight half of the queues, against the share
    the weights ask for (while every queue still has a backlog)."""
    weights = [w for _, w in queues]
    cut = statistics.median(weights)
    high = [i for i, w in enumerate(weights) if w > cut]
    total = sum(counts) or 1
    expected = sum(weights[i] for i in high) / sum(weights)
    observed = sum(counts[i] for i in high) / total
    by_weight: dict[int, int] = {}
    for w, c in zip(weights, counts, strict=True):
        by_weight[w] = by_weight.get(w, 0) + c
    return {"at_processed": total, "high_weight_share_expected": round(expected, 3),
            "high_weight_share_observed": round(observed, 3),
            "processed_by_weight": {str(k): v for k, v in sorted(by_weight.items())}}


# -- idle agent: CPU and latency ------------------------------------------------------------

class CompletionWatcher:
    """Records, per task, when Redis wrote its hash (the enqueue: first ``hset``), moved it to
    active (the dequeue's ``hdel pending_since``) and deleted it (the done script), via
    keyspace notifications on a connection of its own, in a thread."""

    def __init__(self, url: str, queue: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.prefix = f"__keyspace@0__:{keys.task_prefix(queue)}"
        self.marks: dict[str, dict[str, float]] = {}
        self.done: dict[str, dict[str, float]] = {}
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(self.prefix + "*")
        self.thread = threading.Thread(target=self._run, name="completion-watcher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.pubsub.get_message(timeout=0.2)
            if not msg:
                continue
            now = time.perf_counter()
            event = msg.get("data")
            task_id = msg["channel"].decode()[len(self.prefix):]
            with self.cond:
                marks = self.marks.setdefault(task_id, {})
                if event == b"hset":
                    marks.setdefault("written", now)
                elif event == b"hdel":
                    marks.setdefault("active", now)
                elif event == b"del":
                    marks["done"] = now
                    self.done[task_id] = self.marks.pop(task_id)
                    self.cond.notify_all()

    def wait(self, task_id: str, timeout: float = 5.0) -> dict[str, float] | None:
        with self.cond:
            self.cond.wait_for(lambda: task_id in self.done, timeout)
            self.marks.pop(task_id, None)
            return self.done.pop(task_id, None)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.pubsub.close()
        self.client.close()


def idle_and_latency(h: Harness, agent: AgentUnderTest, queue: str, samples: int,
                     idle_seconds: float) -> dict:
    """On an idle agent: its CPU while idle, then enqueue -> completed latency for tasks from
    our client and from a bare producer, one task at a time, interleaved."""
    from agent.client import Client

    r = h.redis()
    time.sleep(1.0)
    before = sample_tree(agent.pid)
    time.sleep(idle_seconds)
    after = sample_tree(agent.pid)
    span = after.t - before.t
    idle = {"seconds": round(span, 2),
            "agent_cpu_percent": round((after.cpu - before.cpu) / span * 100, 3),
            "children_cpu_percent": round(children_cpu_delta(before, after) / span * 100, 3)}

    r.config_set("notify-keyspace-events", "Kgh")
    watcher = CompletionWatcher(h.redis_url, queue)
    client = Client(h.redis_url)
    bare = BareProducer(r)
    got: dict[str, list[float]] = {"client": [], "bare": []}
    calls: dict[str, list[float]] = {"client": [], "bare": []}
    to_active: dict[str, list[float]] = {"client": [], "bare": []}
    to_done: dict[str, list[float]] = {"client": [], "bare": []}
    lost = {"client": 0, "bare": 0}
    try:
        # warm-up: one of each (connections, script load), not counted
        for producer in ("client", "bare") * 2:
            _one_latency(producer, client, bare, watcher, queue)  # result not counted
            time.sleep(0.05)
        for i in range(samples * 2):
            producer = "client" if i % 2 == 0 else "bare"
            t0, call, marks = _one_latency(producer, client, bare, watcher, queue)
            calls[producer].append(call)
            if marks is None:
                lost[producer] += 1
                continue
            got[producer].append(marks["done"] - t0)
            if "written" in marks and "active" in marks:
                to_active[producer].append(marks["active"] - marks["written"])
                to_done[producer].append(marks["done"] - marks["active"])
            time.sleep(0.02 + random.random() * 0.02)  # idle again before the next one
    finally:
        watcher.close()
        client.close()
        r.config_set("notify-keyspace-events", "")
        r.close()
    return {"idle": idle,
            **{f"latency_{p}": {**summary_ms(got[p]), "lost": lost[p],
                                "enqueue_call_p50_ms": summary_ms(calls[p])["p50_ms"],
                                # written -> taken by the agent -> outcome written, all in Redis time
                                "pending_to_active_p50_ms": summary_ms(to_active[p])["p50_ms"],
                                "active_to_done_p50_ms": summary_ms(to_done[p])["p50_ms"]}
               for p in ("client", "bare")}}


def _one_latency(producer: str, client, bare: BareProducer, watcher: CompletionWatcher,
                 queue: str) -> tuple[float, float, dict[str, float] | None]:
    """(start time, duration of the enqueue call, the watcher's marks or None if lost)."""
    task_id = str(uuid.uuid4())
    t0 = time.perf_counter()
    if producer == "client":
        client.enqueue("noop", {"n": 0}, queue=queue, task_id=task_id)
    else:
        bare.enqueue(queue, "noop", b'{"n":0}', task_id)
    called = time.perf_counter() - t0
    return t0, called, watcher.wait(task_id)


# -- interpreter start cost (one_shot) --------------------------------------------------------

def _timed_run(argv: list[str], limit: float = 30.0) -> float:
    """Wall time of one run. A blocking wait with a watchdog thread, not ``timeout=``: with
    a timeout, subprocess polls with growing sleeps and rounds the figure up to ~32 ms."""
    # Bytecode caching on, as in production (a shell with PYTHONDONTWRITEBYTECODE would
    # otherwise make every run compile the project's modules again).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=APP_DIR, env=env)
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    try:
        code = proc.wait()
    finally:
        watchdog.cancel()
    seconds = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"{argv} exited with {code}")
    return seconds


def startup_costs(reps: int) -> dict:
    """Median wall time of: an interpreter without ``site`` (-S), a bare one, one that
    imports asyncio, one that imports task_sdk, and a full one_shot child start (our app:
    import, report ready, find stdin closed, exit)."""
    runs = {
        "python_no_site_ms": [sys.executable, "-S", "-c", "pass"],
        "python_bare_ms": [sys.executable, "-c", "pass"],
        "python_import_asyncio_ms": [sys.executable, "-c", "import asyncio"],
        "python_import_task_sdk_ms": [sys.executable, "-c", "import task_sdk"],
        "one_shot_child_start_exit_ms": [sys.executable, str(APP_DIR / "noop_sync_worker.py"), "--once"],
    }
    out = {}
    for label, argv in runs.items():
        times = []
        for _ in range(reps):
            times.append(_timed_run(argv))
        out[label] = round(statistics.median(times) * 1000, 1)
    return out

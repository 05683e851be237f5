"""The fleet section: 1, then 8, 16 and 32 agents on one Redis (issue 20).

Every agent: one queue (``fleet``), async handlers (bench/apps/fleet_worker.py) in one child
with 64 slots (concurrency 64, async_limit 64, prefetch 0), so agents are light. For each
agent count, with the same agents:

1. **idle**: Redis command executions per second per agent while no task exists (heartbeats,
   wake-up waits, recoverer, forwarder, janitor, samplers);
2. **busy**: the same while every slot of every agent runs a task that takes several seconds
   (lease renewals join them; no task starts or ends in the window), the issue's "background"
   figure;
3. **drain**: a backlog of 50 ms tasks, with its rate, Redis CPU per completed task, Redis
   commands per task and the connections held;
4. **latency**: tasks enqueued at a steady rate, enqueue -> start (the dequeue script's write
   of ``state active`` to the task hash, seen through keyspace notifications), p50 and p99.

Command executions are ``INFO commandstats`` calls, the commands scripts run included.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import redis

from agent.broker import keys
from agent.client import Client
from bench.agent_runs import AgentSetup, AgentUnderTest, Harness, _pause
from bench.measure import process_cpu, summary_ms
from bench.procs import wait_until

QUEUE = "fleet"
APP = "python fleet_worker.py"
SLOTS = 64
HANDLER_SECONDS = 0.05
SETUP = dict(concurrency=SLOTS, processes=1, threads=1, async_limit=SLOTS, prefetch=0)


def commands(r: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in r.info("commandstats").items()}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def _background(delta: dict[str, int], seconds: float, agents: int) -> tuple[float, dict[str, float]]:
    """Commands per second per agent, without the ones this harness sends (INFO, polling)."""
    own = {k: v for k, v in delta.items() if k not in ("info", "mget", "config|resetstat", "llen")}
    rate = sum(own.values()) / seconds / agents
    return rate, {k: round(v / seconds / agents, 2) for k, v in list(own.items())[:8]}


def start_agents(h: Harness, count: int, tag: str) -> list[AgentUnderTest]:
    setup = AgentSetup([(QUEUE, 1)], startup_cmd=APP, **SETUP)
    agents = [AgentUnderTest(h, setup, f"fleet{tag}-{i:02d}") for i in range(count)]
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        wait_until(agent._ready, 180.0, 0.1, f"agent {agent.name} ready")
        h.procs.note_descendants(agent.proc)
    return agents


def stop_agents(agents: list[AgentUnderTest]) -> None:
    for agent in agents:  # all at once: they drain in parallel
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGTERM)
    for agent in agents:
        agent.stop()


def _connections(r: redis.Redis) -> int:
    return int(r.info("clients")["connected_clients"])


def run_count(h: Harness, count: int, *, n: int, idle_s: float, busy_s: float,
              latency_rate: float, latency_s: float) -> dict:
    r = h.redis()
    r.flushall()
    own_connections = _connections(r)
    agents = start_agents(h, count, str(count))
    row: dict = {"agents": count}
    try:
        time.sleep(2.0)  # start-up work settles (first heartbeat, forwarder, recoverer runs)
        # 1. idle
        before, t0, cpu0 = commands(r), time.perf_counter(), process_cpu(h.redis_pid)
        time.sleep(idle_s)
        seconds = time.perf_counter() - t0
        rate, top = _background(_delta(commands(r), before), seconds, count)
        row["idle_background_commands_per_s_per_agent"] = round(rate, 1)
        row["idle_redis_cpu_ms_per_s_per_agent"] = round((process_cpu(h.redis_pid) - cpu0) / seconds / count * 1e3, 3)
        row["idle_top"] = top
        # 2. busy: every slot runs a task that outlasts the window
        hold = busy_s + 4.0
        with Client(h.redis_url) as client:
            for lo in range(0, count * SLOTS, 1000):
                client.enqueue_many([("hold", {"s": hold}, {"queue": QUEUE})
                                     for _ in range(lo, min(count * SLOTS, lo + 1000))])
        wait_until(lambda: r.llen(keys.active(QUEUE)) >= count * SLOTS, 60.0, 0.05, "every slot busy")
        time.sleep(0.5)
        before, t0, cpu0 = commands(r), time.perf_counter(), process_cpu(h.redis_pid)
        time.sleep(busy_s)
        seconds = time.perf_counter() - t0
        rate, top = _background(_delta(commands(r), before), seconds, count)
        row["background_commands_per_s_per_agent"] = round(rate, 1)
        row["background_redis_cpu_ms_per_s_per_agent"] = round(
            (process_cpu(h.redis_pid) - cpu0) / seconds / count * 1e3, 3)
        row["background_top"] = top
        wait_until(lambda: r.llen(keys.active(QUEUE)) == 0 and r.llen(keys.pending(QUEUE)) == 0,
                   60.0, 0.1, "hold tasks done")
        # 3. drain a backlog of 50 ms tasks
        row.update(_drain(h, r, count, n, own_connections))
        # 4. latency at a steady rate
        row.update(_latency(h, r, latency_rate, latency_s))
    finally:
        stop_agents(agents)
        r.close()
    return row


def _drain(h: Harness, r: redis.Redis, count: int, n: int, own_connections: int) -> dict:
    _pause(r, [QUEUE], True)
    with Client(h.redis_url) as client:
        for lo in range(0, n, 1000):
            client.enqueue_many([("sleep50ms", {"n": i}, {"queue": QUEUE}) for i in range(lo, min(n, lo + 1000))])
    done_key = keys.processed_total(QUEUE)
    start_done = int(r.get(done_key) or 0)
    before, cpu0 = commands(r), process_cpu(h.redis_pid)
    t0 = time.perf_counter()
    _pause(r, [QUEUE], False)
    connections, deadline = 0, time.monotonic() + 120 + n / 200
    while True:
        done = int(r.get(done_key) or 0) - start_done
        if not connections and done > n // 3:
            connections = _connections(r) - own_connections
        if done >= n:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"fleet drain incomplete: {done}/{n}")
        time.sleep(0.01)
    seconds = time.perf_counter() - t0
    cpu = process_cpu(h.redis_pid) - cpu0
    delta = _delta(commands(r), before)
    return {"n": n, "tasks_per_s": round(n / seconds, 1),
            "ideal_tasks_per_s": round(count * SLOTS / HANDLER_SECONDS, 1),
            "redis_cpu_us_per_task": round(cpu / n * 1e6, 2), "redis_cpu_util": round(cpu / seconds, 3),
            "redis_commands_per_task": round(sum(delta.values()) / n, 2),
            "drain_top_per_task": {k: round(v / n, 3) for k, v in list(delta.items())[:8]},
            "connections": connections, "connections_per_agent": round(connections / count, 2)}


def _latency(h: Harness, r: redis.Redis, rate: float, seconds: float) -> dict:
    """Enqueue at ``rate`` for ``seconds``; enqueue -> state active (keyspace notification)."""
    r.config_set("notify-keyspace-events", "Kh")
    started: dict[str, float] = {}
    seen: dict[str, int] = {}
    sub = redis.Redis.from_url(h.redis_url).pubsub()
    sub.psubscribe(f"__keyspace@*__:{keys.queue_prefix(QUEUE)}t:*")
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = sub.get_message(timeout=0.1)
            if message and message["type"] == "pmessage" and message["data"] == b"hset":
                task_id = message["channel"].rsplit(b":t:", 1)[1].decode()
                seen[task_id] = seen.get(task_id, 0) + 1
                if seen[task_id] == 2:  # the enqueue's HSET, then the dequeue's
                    started[task_id] = time.perf_counter()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    sent: dict[str, float] = {}
    try:
        with Client(h.redis_url) as client:
            t_next = time.perf_counter()
            end = t_next + seconds
            while t_next < end:
                task_id = str(uuid.uuid4())
                sent[task_id] = time.perf_counter()
                client.enqueue("sleep50ms", {"n": 0}, queue=QUEUE, task_id=task_id)
                t_next += 1.0 / rate
                time.sleep(max(0.0, t_next - time.perf_counter()))
        wait_until(lambda: len(started) >= len(sent), 30.0, 0.05, "every latency sample started")
    finally:
        stop.set()
        listener.join(2)
        sub.close()
        r.config_set("notify-keyspace-events", "")
    got = [started[t] - sent[t] for t in sent if t in started]
    summary = summary_ms(got)
    return {"latency_samples": len(got), "latency_lost": len(sent) - len(got),
            "latency_rate": rate, "latency_p50_ms": summary["p50_ms"], "latency_p99_ms": summary["p99_ms"],
            "latency_max_ms": summary["max_ms"]}


def run_fleet(h: Harness, counts: tuple[int, ...], *, n: int, idle_s: float, busy_s: float,
              latency_rate: float, latency_s: float) -> dict:
    rows = []
    for count in counts:
        # one agent's 64 slots allow 1,280 tasks/s: its backlog is sized to take ~5 s too
        size = n if count > 1 else min(n, 6_000)
        try:
            rows.append(run_count(h, count, n=size, idle_s=idle_s, busy_s=busy_s,
                                  latency_rate=latency_rate, latency_s=latency_s))
        except Exception as exc:  # noqa: BLE001 - the other counts still run
            rows.append({"agents": count, "error": f"{type(exc).__name__}: {exc}"})
    out = {"rows": rows, "counts": list(counts),
           "description": f"one queue, each agent {SLOTS} async slots (1 child, async_limit {SLOTS}, "
                          f"prefetch 0), 50 ms handlers"}
    by = {row["agents"]: row for row in rows if "error" not in row}
    if 1 in by and max(counts) in by:
        out["redis_cpu_per_task_32_over_1"] = round(
            by[max(counts)]["redis_cpu_us_per_task"] / by[1]["redis_cpu_us_per_task"], 3)
        out["largest"] = max(counts)
    return out

"""The batching section: a handler costing 20 ms per call + 1 ms per item, batched (32 items,
max_wait 10 ms) against unbatched, at the same number of child slots (issue 17's targets:
throughput >= 10x; p99 added latency <= max_wait + 5 ms at low load).

Added latency is, per task, the time from its enqueue (the producer's clock) to the start of
the handler call that ran it (the child's clock, same machine): the wait in Redis, the dequeue,
the wait for the batch to fill (at most ``max_wait``) and the hand-off to the child.
"""

from __future__ import annotations

import math
import random
import statistics
import time

from agent.client import Client
from bench import agent_runs
from bench.agent_runs import AgentSetup, AgentUnderTest, Harness

APP = "python batch_worker.py"
MAX_WAIT = 0.010
SLOTS = dict(concurrency=2, processes=2, threads=1, prefetch=0)  # two child slots either way
SIZES = {  # mode: (unbatched tasks, batched tasks, latency samples)
    "smoke": (40, 320, 20),
    "quick": (200, 3_200, 300),  # 300 samples: a p99 of 100 would be their maximum
    "full": (400, 8_000, 500),
}


def run(h: Harness, mode: str) -> dict:
    plain_n, batched_n, samples = SIZES[mode]
    setup = AgentSetup([("bench", 1)], startup_cmd=APP, **SLOTS)
    plain, _ = agent_runs.drain(h, "batch-plain", n=plain_n, setup=setup, task_type="embed_one",
                                min_rate=20)
    batched, agent = agent_runs.drain(h, "batch-32", n=batched_n, setup=setup, task_type="embed",
                                      min_rate=200, keep_agent=True)
    assert agent is not None
    try:
        latency = added_latency(h, agent, "embed", samples)
    finally:
        agent.stop()
    plain_latency = _plain_latency(h, setup, samples)
    ratio = (batched["tasks_per_s"] or 0) / max(plain["tasks_per_s"] or 1e-9, 1e-9)
    return {
        "handler": "20 ms per call + 1 ms per item (time.sleep)",
        "slots": SLOTS, "batch": 32, "max_wait_ms": MAX_WAIT * 1000,
        "unbatched": _short(plain), "batched": _short(batched),
        "throughput_ratio": round(ratio, 2), "throughput_target": 10.0,
        "added_latency_ms": latency, "unbatched_added_latency_ms": plain_latency,
        "p99_added_latency_target_ms": MAX_WAIT * 1000 + 5,
    }


def _short(result: dict) -> dict:
    keys = ("n", "config", "tasks_per_s", "drain_seconds", "agent_cpu_us_per_task", "leftover")
    return {k: result.get(k) for k in keys}


def _plain_latency(h: Harness, setup: AgentSetup, samples: int) -> dict:
    h.redis().flushall()
    agent = AgentUnderTest(h, setup, "batch-plain-latency").start()
    try:
        return added_latency(h, agent, "embed_one", samples)
    finally:
        agent.stop()


def added_latency(h: Harness, agent: AgentUnderTest, task_type: str, samples: int) -> dict:
    """Low load: one task at a time, 20-40 ms apart; per task, enqueue to handler start."""
    added: list[float] = []
    rng = random.Random(17)
    with Client(h.redis_url) as client:
        for _ in range(samples):
            time.sleep(rng.uniform(0.02, 0.04))
            enqueued = time.time()
            info = client.enqueue(task_type, {"x": 1}, queue="bench", retention=60)
            done = client.wait("bench", info.id, timeout=10, poll=0.002)
            added.append((done.result_json()["started"] - enqueued) * 1000)
    added.sort()
    return {"samples": samples, "p50": round(statistics.median(added), 2),
            "p90": round(_rank(added, 0.90), 2), "p99": round(_rank(added, 0.99), 2),
            "max": round(added[-1], 2)}


def _rank(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile: of 300 samples, p99 is the 297th (the 3 slowest are above)."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

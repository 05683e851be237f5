"""What a chain step costs over a plain enqueue: ``python -m bench.workflows`` (or the
``workflows`` section of ``python -m bench``).

Two measurements, each on a 100-step chain:

* **successor enqueue** (no agent): the work the agent does when a step completes (the
  workflow's completion script, reading the successor and the result it receives, the
  enqueue, the mark) timed per step in-process against the same Redis, beside a plain
  ``AsyncClient.enqueue`` of the same task;
* **end to end** (one agent, the short-task configuration, a no-op handler): seconds from
  the chain's creation to its last step's completion, per step, beside one plain task at a
  time enqueued and waited for the same way (polled every millisecond).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

STEPS = 100


async def _successor_costs(url: str, reps: int, steps: int = STEPS) -> dict:
    import redis.asyncio as aioredis

    from agent.client import AsyncClient, sig
    from agent.workflows.engine import WorkflowEngine

    client = aioredis.from_url(url)
    engine = WorkflowEngine(client)
    costs: list[float] = []
    plain: list[float] = []
    async with AsyncClient(url) as producer:
        await producer.enqueue("noop", {"warm": 1}, queue="wfbench-plain")  # connections, scripts
        for _ in range(reps):
            info = await producer.chain([sig("noop", {"i": i}, queue="wfbench") for i in range(steps)])
            for i in range(steps):
                t0 = time.perf_counter()
                await engine.completed(info.id, str(i), b'{"ok":true}')
                costs.append(time.perf_counter() - t0)
            for i in range(steps):
                t0 = time.perf_counter()
                await producer.enqueue("noop", {"i": i, "previous": {"ok": True}}, queue="wfbench-plain",
                                       retention=86400)
                plain.append(time.perf_counter() - t0)
    await client.flushall()
    await client.aclose()
    step_us, plain_us = statistics.median(costs) * 1e6, statistics.median(plain) * 1e6
    return {"steps": steps, "reps": reps, "successor_enqueue_us_p50": round(step_us),
            "plain_enqueue_us_p50": round(plain_us), "ratio": round(step_us / plain_us, 2),
            "successor_enqueue_us_p99": round(sorted(costs)[int(len(costs) * 0.99)] * 1e6)}


def _end_to_end(h, reps: int, steps: int = STEPS) -> dict:
    from agent.client import Client, sig
    from bench.agent_runs import SHORT_TASK, AgentSetup, AgentUnderTest

    agent = AgentUnderTest(h, AgentSetup([("wfbench", 1)], startup_cmd="python noop_sync_worker.py",
                                         **SHORT_TASK), "workflows").start()
    chain_s: list[float] = []
    plain_s: list[float] = []
    try:
        with Client(h.redis_url) as client:
            def run_chain() -> float:
                t0 = time.perf_counter()
                info = client.chain([sig("noop", queue="wfbench") for _ in range(steps)])
                last = info.task_ids[-1]
                client.wait("wfbench", last, timeout=120, poll=0.001)
                return time.perf_counter() - t0

            def run_plain() -> float:
                t0 = time.perf_counter()
                for _ in range(steps):
                    info = client.enqueue("noop", queue="wfbench", retention=600)
                    client.wait("wfbench", info.id, timeout=30, poll=0.001)
                return time.perf_counter() - t0

            run_chain()  # warm-up, not counted
            for _ in range(reps):
                chain_s.append(run_chain())
                plain_s.append(run_plain())
    finally:
        agent.stop()
    chain_ms = statistics.median(chain_s) / steps * 1e3
    plain_ms = statistics.median(plain_s) / steps * 1e3
    return {"steps": steps, "reps": reps, "config": agent.setup.label(),
            "chain_ms_per_step": round(chain_ms, 2), "plain_ms_per_task": round(plain_ms, 2),
            "overhead_ms_per_step": round(chain_ms - plain_ms, 2)}


def run(h, reps: int, steps: int = STEPS) -> dict:
    """Both measurements on the harness's Redis (flushed before and after); ``steps``: the
    chain's length (100; fewer for a smoke run)."""
    r = h.redis()
    r.flushall()
    try:
        out = {"successor_enqueue": asyncio.run(_successor_costs(h.redis_url, reps, steps))}
        r.flushall()
        out["end_to_end"] = _end_to_end(h, reps, steps)
        return out
    finally:
        r.flushall()
        r.close()


def main(argv: list[str] | None = None) -> int:
    import shutil

    from agent.local_redis import LocalRedis, find_redis_server
    from bench.agent_runs import Harness
    from bench.procs import Processes

    p = argparse.ArgumentParser(prog="python -m bench.workflows", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="100-step chains per measurement (default 3)")
    args = p.parse_args(argv)
    procs = Processes()
    server = LocalRedis()
    workdir = Path(tempfile.mkdtemp(prefix="rundown-workflows-bench-"))
    try:
        server.binary = find_redis_server()
        server.start()
        assert server.process is not None
        result = run(Harness(procs, server.url, server.process.pid, workdir, workdir), args.reps)
    finally:
        procs.stop_all()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

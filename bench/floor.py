"""The floor: the agent's own dequeue and outcome Lua scripts, driven by a bare asyncio loop
through ``agent.broker``, with none of the agent's features (no leases thread, heartbeat,
metrics, per-task asyncio tasks).

Each lane loops: one dequeue call for up to ``batch`` IDs, then one pipelined round trip of
outcomes; ``lanes`` lanes keep that many calls in flight. Variants:

* ``done``: one ``done`` EVALSHA per task (the asynq script);
* ``done_many``: the agent's merged outcome call (``agent.broker.batch.ScriptBatcher``);
* ``child``: as ``done_many``, and every batch also goes through one real task_sdk child
  (the bench app, sync handler) over the agent's own JSON-lines codec
  (``agent.supervisor.protocol``): one pipe write per batch, the answers parsed as they come.

It is the limit of our Redis layout on the machine at hand (``child``: of the layout plus
the child protocol); the Redis CPU utilisation beside it says whether Redis (near 1.0) or
this Python loop was the limit. The loop runs in the harness process, so its CPU per task
is the client's cost.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import psutil
import redis.asyncio as aioredis

from agent.broker import Broker, plans
from agent.broker.scripts import source
from bench.agent_runs import APP_DIR, Harness, leftovers
from bench.measure import cpu_seconds, own_cpu, process_cpu, system_busy_seconds
from bench.workload import enqueue_parallel

VARIANTS = ("done", "done_many", "child")


def has_done_many() -> bool:
    try:
        from agent.broker.batch import ScriptBatcher  # noqa: F401
    except ImportError:
        return False
    return True


class _Child:
    """One task_sdk child driven directly: batches of request lines in, answers out."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.waiting: dict[str, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None

    async def start(self, max_in_flight: int, timeout: float = 30.0) -> None:
        env = {**os.environ, "RUNDOWN_PROTOCOL": "1", "RUNDOWN_MAX_IN_FLIGHT": str(max_in_flight),
               "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(APP_DIR) / "noop_sync_worker.py"), cwd=APP_DIR, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        assert self.proc.stdout is not None
        ready = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if b'"ready"' not in ready:
            raise RuntimeError(f"floor child did not report ready: {ready[:200]!r}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from agent.supervisor.protocol import Response, parse_line

        assert self.proc is not None and self.proc.stdout is not None
        buffer = b""
        while True:
            chunk = await self.proc.stdout.read(1 << 16)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                for message in parse_line(line):
                    if isinstance(message, Response):
                        future = self.waiting.pop(message.task_id, None)
                        if future is not None and not future.done():
                            future.set_result(message)
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("floor child exited"))

    async def run_batch(self, tasks) -> None:
        from agent.supervisor.protocol import encode_request
        from agent.supervisor.task_request import TaskRequest

        assert self.proc is not None and self.proc.stdin is not None
        loop = asyncio.get_running_loop()
        futures = []
        lines = []
        for task in tasks:
            future = loop.create_future()
            self.waiting[task.id] = future
            futures.append(future)
            lines.append(encode_request(TaskRequest.from_dequeued(task)))
        self.proc.stdin.write(b"".join(lines))
        answers = await asyncio.gather(*futures)
        failed = [a for a in answers if a.error]
        if failed:
            raise RuntimeError(f"floor child: task failed: {failed[0].error}")

    def cpu_seconds(self) -> float:
        if self.proc is None:
            return 0.0
        try:
            return cpu_seconds(psutil.Process(self.proc.pid))
        except psutil.Error:
            return 0.0

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()


async def _lanes(url: str, queue: str, batch: int, lanes: int, timeout: float,
                 variant: str) -> tuple[int, float, float]:
    """(tasks done, seconds, the child's CPU seconds over the run)"""
    client = aioredis.Redis.from_url(url, socket_timeout=30)
    broker = Broker(client)
    batcher = None
    if variant != "done":
        from agent.broker.batch import ScriptBatcher

        batcher = ScriptBatcher(client)
    done_sha = await client.script_load(source("done"))
    await client.script_load(source("dequeue"))
    child = _Child() if variant == "child" else None
    count = 0

    async def lane() -> None:
        nonlocal count
        while True:
            tasks, _ = await broker.dequeue(queue, batch)
            if not tasks:
                return
            if child is not None:
                await child.run_batch(tasks)
            now = time.time()
            calls = [plans.done_call(task.message, now) for task in tasks]
            if batcher is not None:
                results = await batcher.execute(calls)
            else:
                pipe = client.pipeline(transaction=False)
                for call in calls:
                    pipe.evalsha(done_sha, len(call.keys), *call.keys, *call.args)
                results = await pipe.execute(raise_on_error=False)
            bad = [r for r in results if isinstance(r, Exception)]
            if bad:
                raise RuntimeError(f"floor: outcome failed: {bad[0]}")
            count += len(tasks)

    try:
        child_cpu = 0.0
        if child is not None:
            await child.start(batch * lanes)
            child_cpu = child.cpu_seconds()
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(lanes))), timeout)
        seconds = time.perf_counter() - t0
        if child is not None:
            child_cpu = child.cpu_seconds() - child_cpu
        return count, seconds, child_cpu
    finally:
        if child is not None:
            await child.stop()
        await client.aclose()


def run_floor(h: Harness, *, n: int, variant: str = "done", batch: int = 64, lanes: int = 2,
              queue: str = "floor", timeout: float = 300.0) -> dict:
    r = h.redis()
    r.flushall()
    enqueue_parallel(h.redis_url, n, [queue], "noop", procs=2 if n >= 200_000 else 1)
    redis_before = process_cpu(h.redis_pid)
    system_before, own_before = system_busy_seconds(), own_cpu()
    t0 = time.perf_counter()
    count, seconds, child_cpu = asyncio.run(_lanes(h.redis_url, queue, batch, lanes, timeout, variant))
    wall = time.perf_counter() - t0
    redis_cpu = process_cpu(h.redis_pid) - redis_before
    own = own_cpu() - own_before  # the loop (the child's CPU is not in it)
    others = system_busy_seconds() - system_before - redis_cpu - own
    left = leftovers(r, [queue])
    r.close()
    if count != n:
        raise RuntimeError(f"floor processed {count} of {n}")
    return {"n": n, "variant": variant, "batch": batch, "lanes": lanes,
            "seconds": round(seconds, 3), "tasks_per_s": round(n / seconds, 1),
            "client_cpu_us_per_task": round(own / n * 1e6, 2),
            "child_cpu_us_per_task": round(child_cpu / n * 1e6, 2) if variant == "child" else None,
            "redis_cpu_us_per_task": round(redis_cpu / n * 1e6, 2),
            "redis_cpu_util": round(redis_cpu / seconds, 3),
            "other_processes_cpu_util": round(max(0.0, others) / wall, 3),
            "leftover": left}

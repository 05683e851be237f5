"""Unit costs of operations the agent's hot path performs per task, measured in this
interpreter, so a profile's call counts can be turned into microseconds per task."""

from __future__ import annotations

import asyncio
import json
import time
import timeit
import uuid

import orjson


def _best_us(stmt, number: int, repeat: int = 5) -> float:
    return round(min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6, 3)


async def _asyncio_costs(n: int) -> dict:
    loop = asyncio.get_running_loop()

    async def noop() -> None:
        return None

    def best(fn) -> float:
        return min(fn() for _ in range(3))

    async def tasks() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await loop.create_task(noop())
        return time.perf_counter() - t0

    def timers() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loop.call_later(30.0, noop).cancel()
        return time.perf_counter() - t0

    async def futures() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, None)
            await fut
        return time.perf_counter() - t0

    async def wait_for() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await asyncio.wait_for(noop(), 30.0)
        return time.perf_counter() - t0

    results = {}
    for name, fn in (("create_task + await a no-op coroutine", tasks),
                     ("future resolved by call_soon + await", futures),
                     ("asyncio.wait_for(no-op, 30)", wait_for)):
        results[name] = round(min([await fn() for _ in range(3)]) / n * 1e6, 3)
    results["call_later(30) + cancel"] = round(best(timers) / n * 1e6, 3)
    return results


def run_micro() -> dict:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from redis.asyncio.connection import Connection

    from agent.broker import plans
    from agent.broker.messages import TaskMessage, decode_task_message

    reg = CollectorRegistry()
    counter = Counter("bench_c", "c", ["queue", "type", "state"], registry=reg)
    child = counter.labels("bench", "noop", "deleted")
    hist = Histogram("bench_h", "h", ["queue"], registry=reg).labels("bench")
    msg = TaskMessage(type="noop", payload=b'{"n":1}', id=str(uuid.uuid4()), queue="bench",
                      retry=25, timeout=1800)
    raw = msg.SerializeToString()
    call = plans.done_call(msg, time.time())
    conn = Connection()
    request = {"id": msg.id, "type": "noop", "payload": {"n": 1}, "deadline": time.time() + 1800,
               "retry_count": 0, "max_retry": 25, "queue": "bench"}
    out = {
        "prometheus Counter child .inc()": _best_us(child.inc, 200_000),
        "prometheus Counter .labels(3 labels).inc()": _best_us(
            lambda: counter.labels("bench", "noop", "deleted").inc(), 100_000),
        "prometheus Histogram child .observe()": _best_us(lambda: hist.observe(0.001), 200_000),
        "protobuf TaskMessage decode (agent.broker.messages)": _best_us(lambda: decode_task_message(raw), 100_000),
        "plans.done_call (keys and args of one done)": _best_us(lambda: plans.done_call(msg, 1.0), 100_000),
        "redis-py pack_command(EVALSHA done, 8 args)": _best_us(
            lambda: conn.pack_command("EVALSHA", "0" * 40, len(call.keys), *call.keys, *call.args), 50_000),
        "orjson.dumps(request dict)": _best_us(lambda: orjson.dumps(request), 200_000),
        "json.dumps(request dict, compact)": _best_us(lambda: json.dumps(request, separators=(",", ":")), 100_000),
        "uuid.uuid4() as str": _best_us(lambda: str(uuid.uuid4()), 100_000),
    }
    out.update(asyncio.run(_asyncio_costs(50_000)))
    return {"unit": "µs per operation (best of 5)", "costs": out}

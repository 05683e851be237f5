"""Benchmark task code with async handlers: no-op handlers that return a small dict, and
``sleep50ms``, a handler that awaits 50 ms (I/O-like; the realistic section).

Run by the agent under test as ``python noop_worker.py`` (long_running) in a child process.
"""

import asyncio

from task_sdk import run, task


@task("noop")
async def noop(payload):
    return {"ok": True}


@task("sleep50ms")
async def sleep50ms(payload):
    await asyncio.sleep(0.05)
    return {"ok": True}


@task("size")
async def size(payload):
    return {"bytes": len(payload.get("blob", "")) if isinstance(payload, dict) else len(payload)}


if __name__ == "__main__":
    run()

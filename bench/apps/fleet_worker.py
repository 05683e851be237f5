"""Benchmark task code for the fleet section: async handlers, so one child holds the agent's
64 slots. ``sleep50ms`` awaits 50 ms (the fleet's work); ``hold`` awaits ``payload["s"]``
seconds (keeps every slot busy while background Redis work is counted)."""

import asyncio

from task_sdk import run, task


@task("sleep50ms")
async def sleep50ms(payload):
    await asyncio.sleep(0.05)
    return {"ok": True}


@task("hold")
async def hold(payload):
    await asyncio.sleep(float(payload.get("s", 1.0)))
    return {"ok": True}


if __name__ == "__main__":
    run()

"""Benchmark task code mixing handler kinds in one module (issue 20, item 1): the no-op
``noop`` is sync, ``noop_async`` the same as ``async def``. Compared with
``noop_sync_worker.py``, which has sync handlers only."""

from task_sdk import run, task


@task("noop")
def noop(payload):
    return {"ok": True}


@task("noop_async")
async def noop_async(payload):
    return {"ok": True}


if __name__ == "__main__":
    run()

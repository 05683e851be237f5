"""Task code for the workflow tests: every run of a step is counted in Redis
(``WF_REDIS_URL``), so tests can count executions per step."""

import os
import time

import redis

from task_sdk import SkipRetry, current_task, run, task

_r = redis.Redis.from_url(os.environ["WF_REDIS_URL"])


def _count() -> str:
    info = current_task()
    _r.hincrby("wftest:runs", info.id, 1)
    return info.id


@task("wf:step")
def step(payload):
    tid = _count()
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    out = {"n": payload.get("n"), "previous": payload.get("previous"), "results": payload.get("results")}
    _r.hincrby("wftest:ok", tid, 1)
    return out


@task("wf:fail")
def fail(payload):
    tid = _count()
    if not _r.exists(f"wftest:allow:{payload.get('n')}"):
        raise SkipRetry(f"step {payload.get('n')} fails on purpose")
    _r.hincrby("wftest:ok", tid, 1)
    return {"n": payload.get("n"), "previous": payload.get("previous"), "recovered": True}


if __name__ == "__main__":
    run()

"""Task code for the workflow tests: every run of a step is counted in Redis
(``WF_REDIS_URL``), so tests can count executions per step."""

import os
import time

import redis

from task_sdk import SkipRetry, current_task, run, task

if os.environ.get("WF_CLUSTER"):  # a node of a Redis Cluster: follow its slots
    from redis.cluster import RedisCluster

    _r = RedisCluster.from_url(os.environ["WF_REDIS_URL"])
else:
    _r = redis.Redis.from_url(os.environ["WF_REDIS_URL"])
AGENT_PID = os.getppid()  # at start-up: after a SIGKILL of the agent, getppid() is 1


def _log(task_id: str, phase: str) -> None:
    _r.rpush("wftest:log", f"{task_id} {AGENT_PID} {time.time():.3f} {phase}")


def _count() -> str:
    info = current_task()
    _r.hincrby("wftest:runs", info.id, 1)
    _log(info.id, "start")
    return info.id


@task("wf:step")
def step(payload):
    tid = _count()
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    # small results: only the names of what came before (a whole previous result would nest)
    prev = payload.get("previous") if isinstance(payload.get("previous"), dict) else {}
    results = payload.get("results")
    out = {"n": payload.get("n"), "prev": prev.get("n"), "prev_recovered": prev.get("recovered"),
           "results": None if results is None else [x.get("n") if isinstance(x, dict) else x for x in results]}
    _r.hincrby("wftest:ok", tid, 1)
    _log(tid, "ok")
    return out


@task("wf:fail")
def fail(payload):
    tid = _count()
    if not _r.exists(f"wftest:allow:{payload.get('n')}"):
        raise SkipRetry(f"step {payload.get('n')} fails on purpose")
    _r.hincrby("wftest:ok", tid, 1)
    _log(tid, "ok")
    return {"n": payload.get("n"), "recovered": True}


if __name__ == "__main__":
    run()

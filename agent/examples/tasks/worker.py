"""Example task code deployed by rundown-agent (the demo and the end-to-end tests use it).

Each handler gets the task's payload (decoded JSON) and returns a JSON-serialisable result.
"""

import hashlib
import os
import time

from task_sdk import SkipRetry, current_task, load, run, task


@load
def setup():
    # Runs once per child before it reports ready: load models, open pools here.
    return {"started": time.time(), "greeting": os.environ.get("GREETING", "hello")}


@task("greet")
def greet(payload, ctx):
    return {"message": f"{ctx['greeting']}, {payload['name']}!", "pid": os.getpid()}


@task("hash")
def sha256(payload):
    return {"sha256": hashlib.sha256(payload["text"].encode()).hexdigest()}


@task("sleep")
def sleep(payload):
    time.sleep(float(payload.get("seconds", 1)))
    return {"slept": payload.get("seconds", 1)}


@task("flaky")
def flaky(payload):
    info = current_task()
    if info.retry_count < int(payload.get("fail_times", 1)):
        raise RuntimeError(f"failing on purpose (attempt {info.retry_count + 1})")
    return {"succeeded_on_attempt": info.retry_count + 1}


@task("fail")
def fail(payload):
    raise RuntimeError(payload.get("error", "this task always fails"))


@task("reject")
def reject(payload):
    raise SkipRetry(payload.get("error", "rejected: not retried"))


@task
def echo(payload):
    """Default handler: any other task type."""
    return {"echo": payload, "type": current_task().type}


if __name__ == "__main__":
    run()

"""A child written for the runqy Python SDK (runqy-python 0.2.0), with its loop inlined.

It does not use task_sdk: ready is a bare {"status": "ready"}, requests are read strictly one
at a time, answers are printed with print(), and `retry` is never true. The handler acts on
payload["action"] to produce the stdout noise runqy children are known for.
"""

import json
import sys

_handler = None
_loader = None


def task(func):
    global _handler
    _handler = func
    return func


def load(func):
    global _loader
    _loader = func
    return func


def run():
    if _handler is None:
        raise RuntimeError("No task handler registered. Use @task decorator.")
    ctx = _loader() if _loader is not None else None
    print(json.dumps({"status": "ready"}))
    sys.stdout.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        task_id = "unknown"
        try:
            data = json.loads(line)
            task_id = data.get("task_id", "unknown")
            payload = data.get("payload", {})
            if ctx is not None:  # noqa: SIM108 - kept as runqy-python writes it
                result = _handler(payload, ctx)
            else:
                result = _handler(payload)
            response = {"task_id": task_id, "result": result, "error": None, "retry": False}
        except Exception as e:
            response = {"task_id": task_id, "result": None, "error": str(e), "retry": False}
        print(json.dumps(response))
        sys.stdout.flush()


@load
def setup():
    return {"greeting": "hello"}


@task
def handle(payload, ctx):
    action = payload.get("action") if isinstance(payload, dict) else None
    if action == "noise":
        for i in range(payload.get("lines", 10)):
            print(f"progress {i}")
    elif action == "partial":
        print("loading model...", end="")  # no newline: runs into the answer line
    elif action == "garbage":
        print("not json at all {")
        print('{"message": "json without task_id or status"}')
        print("[1, 2, 3]")
        print('{"task_id": 12345, "result": "numeric task id"}')
        print('{"task_id": "some-other-task", "result": "answer for a task never sent"}')
        print(json.dumps({"status": "progress", "percent": 50}))
    elif action == "oversized":
        print("x" * payload["size"])
    elif action == "nan":
        return float("nan")
    elif action == "fail":
        raise ValueError("runqy handler failed")
    return {"echo": payload, "greeting": ctx["greeting"]}


if __name__ == "__main__":
    run()

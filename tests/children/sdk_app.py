"""A deployed-code stand-in written with task_sdk; each task type exercises one behaviour.

Start-up knobs (environment): CHILD_LOAD_SLEEP (seconds @load takes), CHILD_LOAD_FAIL (make
@load raise), CHILD_FAIL_ONCE (a marker path: @load fails the first time only),
CHILD_FAIL_IF_EXISTS (a path: @load fails while it exists), CHILD_IMPORT_FAIL (raise at
import, after task_sdk is imported), CHILD_MODE=once (run_once).
"""

import asyncio
import os
import signal
import sys
import threading
import time

print("sdk_app: printed to stdout at import time, before task_sdk is imported")

from task_sdk import RetryAfter, SkipRetry, current_task, load, run, run_once, task  # noqa: E402

print("sdk_app: printed to stdout at import time, after task_sdk is imported")

if os.environ.get("CHILD_IMPORT_FAIL"):
    raise ImportError("No module named 'missing_dependency'")

_held: list[bytearray] = []


@load
def setup():
    time.sleep(float(os.environ.get("CHILD_LOAD_SLEEP", "0")))
    if os.environ.get("CHILD_LOAD_FAIL"):
        raise RuntimeError("model file missing: models/weights.bin")
    broken = os.environ.get("CHILD_FAIL_IF_EXISTS")
    if broken and os.path.exists(broken):
        raise RuntimeError(f"broken deployment: {broken} exists")
    marker = os.environ.get("CHILD_FAIL_ONCE")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first start fails on purpose")
    return {"loaded_at": time.time(), "model": "tiny"}


@task
def default(payload, ctx):
    return {"handler": "default", "payload": payload, "model": ctx["model"]}


@task("echo")
def echo(payload):
    return payload


@task("pid")
def pid(payload):
    return os.getpid()


@task("email:send")
async def send_email(payload):
    return {"sent_to": payload["to"], "type": current_task().type}


@task(name="image:resize")
def resize(payload, ctx):
    return {"resized": payload["size"] // 2, "type": current_task().type}


@task("context")
def context(payload):
    info = current_task()
    return {
        "id": info.id,
        "type": info.type,
        "queue": info.queue,
        "retry_count": info.retry_count,
        "max_retry": info.max_retry,
        "deadline": info.deadline,
        "timeout": info.timeout,
        "thread": threading.current_thread().name,
    }


@task("context_async")
async def context_async(payload):
    await asyncio.sleep(0)
    return {"id": current_task().id}


@task("payload_kind")
def payload_kind(payload):
    return {
        "kind": type(payload).__name__,
        "value": payload.hex() if isinstance(payload, bytes) else payload,
    }


@task("print_heavy")
def print_heavy(payload):
    for i in range(payload["lines"]):
        print(f"noise line {i} " + "x" * 100)
    os.write(1, b"raw write to fd 1\n")
    sys.stdout.flush()
    return {"printed": payload["lines"]}


@task("partial")
def partial(payload):
    sys.stdout.write("partial line without newline")
    sys.stdout.flush()
    os.write(1, b"raw partial without newline")
    return "ok"


@task("exit")
def exit_now(payload):
    sys.stderr.write("about to exit on purpose\n")
    sys.stderr.flush()
    os._exit(payload["code"])


@task("exit_after")
def exit_after(payload):
    time.sleep(payload["seconds"])
    os._exit(payload["code"])


@task("sigkill")
def sigkill(payload):
    sys.stderr.write("about to be killed\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


@task("hang_sync")
def hang_sync(payload):
    time.sleep(1000)


@task("hang_async")
async def hang_async(payload):
    await asyncio.sleep(1000)


@task("sleep_async")
async def sleep_async(payload):
    start = time.monotonic()
    await asyncio.sleep(payload["seconds"])
    return {"start": start, "end": time.monotonic(), "pid": os.getpid()}


@task("sleep_sync")
def sleep_sync(payload):
    start = time.monotonic()
    time.sleep(payload["seconds"])
    return {"start": start, "end": time.monotonic(), "thread": threading.current_thread().name}


@task("unserialisable")
def unserialisable(payload):
    return {"tags": {"a", "b"}}


@task("nan")
def nan(payload):
    return float("nan")


@task("fail")
def fail(payload):
    raise ValueError("bad input: " + str(payload))


@task("skip")
def skip(payload):
    raise SkipRetry("invoice 42 does not exist")


@task("retry_after")
async def retry_after(payload):
    raise RetryAfter(7.5, "rate limited by the mail provider")


@task("burn_cpu")
def burn_cpu(payload):
    while True:
        pass


@task("input")
def read_input(payload):
    return input()


@task("alloc")
def alloc(payload):
    block = bytearray(payload["mb"] * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _held.append(block)
    return os.getpid()


@task("alloc_when_idle")
def alloc_when_idle(payload):
    """Return at once; allocate ``mb`` a moment later, while the child is idle."""
    def allocate():
        time.sleep(0.1)
        alloc({"mb": payload["mb"]})
    threading.Thread(target=allocate, daemon=True).start()
    return os.getpid()


@task("grow")
def grow(payload):
    """Allocate payload["mb"] MB in 20 MB steps (touching every page), then sleep."""
    for _ in range(payload["mb"] // 20):
        block = bytearray(20 * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        _held.append(block)
        time.sleep(0.02)
    time.sleep(payload.get("then_sleep", 30))
    return os.getpid()


if __name__ == "__main__":
    if os.environ.get("CHILD_MODE") == "once":
        run_once()
    else:
        run()

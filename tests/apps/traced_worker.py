"""Task code for the tracing tests (spans to ``SPAN_FILE``: span_file.py)."""

import os
import sys
import time

from span_file import tracer as _tracer

from task_sdk import RetryAfter, current_task, run, run_once, task


def _inner_span():
    """A span the handler makes itself: it must nest under the SDK's handler span."""
    if _tracer is not None:
        with _tracer.start_as_current_span("user work"):
            pass


@task("traced:ok")
def ok(payload):
    _inner_span()
    return {"n": payload.get("n")}


@task("traced:flaky")
def flaky(payload):
    """Fails its first attempt, succeeds on the next."""
    _inner_span()
    if current_task().retry_count == 0:
        raise RetryAfter(0, "first attempt fails on purpose")
    return {"n": payload.get("n")}


@task("traced:crash")
def crash(payload):
    """Its first attempt kills its own child in the middle of the handler (no span of it can
    be exported); the retry succeeds."""
    _inner_span()
    if current_task().retry_count == 0:
        os._exit(17)
    return {"n": payload.get("n")}


@task("traced:slow")
def slow(payload):
    _inner_span()
    time.sleep(float(payload.get("seconds", 0.2)))
    return {"n": payload.get("n")}


if __name__ == "__main__":
    run_once() if "--once" in sys.argv else run()

"""Async-only task code for the tracing tests: the child serves it on its event loop (not the
inline path), the handler's span current in the handler's asyncio task."""

import asyncio

from span_file import tracer

from task_sdk import RetryAfter, current_task, run, task


@task("traced:async")
async def handle(payload):
    with tracer.start_as_current_span("user work"):
        await asyncio.sleep(0.01)
    if payload.get("fail_first") and current_task().retry_count == 0:
        raise RetryAfter(0, "first attempt fails on purpose")
    return {"n": payload.get("n")}


if __name__ == "__main__":
    run()

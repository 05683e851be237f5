"""task_sdk: write task handlers for rundown-agent (standard library only).

A deployed repository needs nothing else::

    from task_sdk import task, load, run, current_task, SkipRetry, RetryAfter

    @load
    def setup():
        return {"model": load_model()}        # runs once, before the child reports ready

    @task                                    # default handler: every type without its own
    def handle(payload, ctx):
        return {"answer": ctx["model"].predict(payload["prompt"])}

    @task("email:send")                      # one handler per asynq task type
    async def send_email(payload):
        info = current_task()                # id, type, queue, retry_count, max_retry, deadline
        if not payload.get("to"):
            raise SkipRetry("no recipient")  # archive now, no retries
        ...

    if __name__ == "__main__":
        run()                                # run_once() in the agent's one_shot mode

Outcomes: a returned value (JSON-serialisable) completes the task; any other exception is a
retriable failure recorded as ``ExcType: message``; ``SkipRetry`` archives the task at once;
``RetryAfter(seconds)`` retries it after that delay. ``@task("embed", batch=32, max_wait=0.01)``
makes a batched handler (a list of payloads in, a list of results out; an ``ItemError`` or any
exception instance in the list fails that task alone). The wire protocol is in docs/protocol.md.
"""

from __future__ import annotations

from .aggregating import aggregate
from .batching import ItemError
from .channel import under_agent
from .context import TaskContext, current_task
from .errors import RetryAfter, SkipRetry
from .registry import load, task
from .runner import PROTOCOL_VERSION, run, run_once
from .startup import install_startup_error_hook

__all__ = [
    "PROTOCOL_VERSION",
    "ItemError",
    "RetryAfter",
    "SkipRetry",
    "TaskContext",
    "aggregate",
    "current_task",
    "load",
    "run",
    "run_once",
    "task",
]

if under_agent():
    # Isolate the protocol as early as possible (prints at import time go to stderr too), and
    # turn an exception that escapes the user's module before ready into a startup error.
    install_startup_error_hook()

"""InlineExecutor: runs handlers in the agent's own process (no child).

For embedding the agent in a Python program, for tests of the processor, and for the
benchmark's measurement of the agent without a child. Handlers get a
``task_sdk``-like call: ``handler(payload_bytes, task)`` returning bytes/str/JSON-able.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.broker import DequeuedTask
from agent.supervisor.outcome import Outcome, deadline_exceeded

Handler = Callable[[bytes, DequeuedTask], Awaitable[Any]]


class SkipRetry(Exception):
    """Raised by an inline handler: archive the task at once."""


class InlineExecutor:
    def __init__(self, handlers: dict[str, Handler], default: Handler | None = None) -> None:
        self.handlers = handlers
        self.default = default
        self.healthy = True
        self._running: dict[str, asyncio.Task] = {}

    async def execute(self, task: DequeuedTask, deadline: float) -> Outcome:
        assert task.message is not None
        handler = self.handlers.get(task.message.type, self.default)
        if handler is None:
            return Outcome("archive", error=f"no handler for task type {task.message.type!r}")
        run = asyncio.ensure_future(handler(task.message.payload, task))
        self._running[task.id] = run
        try:
            value = await asyncio.wait_for(run, max(0.0, deadline - time.time()))
        except TimeoutError:
            return Outcome("retry", error=deadline_exceeded(
                _seconds_given(task, deadline), "the handler was cancelled"))
        except asyncio.CancelledError:
            return Outcome("retry", error="context canceled")
        except SkipRetry as exc:
            return Outcome("archive", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - the handler's failure is the task's outcome
            return Outcome("retry", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._running.pop(task.id, None)
        if value is None or isinstance(value, bytes):
            result = value
        elif isinstance(value, str):
            result = value.encode()
        else:
            result = json.dumps(value).encode()
        return Outcome("success", result=result)

    async def cancel(self, task_id: str) -> None:
        run = self._running.get(task_id)
        if run is not None:
            run.cancel()


    async def start(self) -> None:
        return None

    async def stop(self, grace: float) -> None:
        for run in list(self._running.values()):
            run.cancel()

    def status(self) -> list[dict]:
        return [{"kind": "inline", "in_flight": len(self._running)}]


def _seconds_given(task: DequeuedTask, deadline: float) -> float:
    """How long the handler had: the task's timeout when that set the deadline (the
    processor's deadline counts whole seconds), otherwise up to the task's own deadline."""
    assert task.message is not None
    timeout = task.message.timeout
    if timeout > 0 and deadline >= int(task.started_at) + timeout:
        return float(timeout)
    return deadline - task.started_at

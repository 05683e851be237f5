"""The agent's side of workflows: after a step's outcome is written, move its workflow on.

:class:`WorkflowObserver` wraps the agent's observer (the metrics): the processor calls
``task_finished`` once the outcome write succeeded (a fenced write: a task whose lease was
lost never gets here), and for a task with the ``rundown-workflow`` header this starts the
workflow's next move in the background. Tasks without the header cost one header lookup.
If the agent dies before the move is done, ``recovery.WorkflowRecovery`` finds the step
completed (its task is kept: steps have a retention) and makes the move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from agent.workflows import keys as wk
from agent.workflows.engine import WorkflowEngine

log = logging.getLogger("agent.workflows")


class WorkflowObserver:
    """Forwards every observer call to ``inner``; ``task_finished`` of a workflow step also
    completes or fails that step (once ``attach`` gave it a Redis client)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        for name in ("tasks_started", "tasks_deleted", "task_dropped", "lease_lost", "redis_error",
                     "dequeued"):  # bound once: no lookup through __getattr__ on the hot path
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))
        self.engine: WorkflowEngine | None = None
        self._moves: set[asyncio.Task] = set()
        self.moved = 0
        self.errors = 0

    def attach(self, redis: Any) -> None:
        self.engine = WorkflowEngine(redis)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def task_finished(self, task: Any, outcome: Any, state: str, seconds: float) -> None:
        self._inner.task_finished(task, outcome, state, seconds)
        message = task.message
        if message is None or self.engine is None or state not in ("completed", "archived"):
            return
        wid = message.headers.get(wk.HEADER_WORKFLOW)
        if not wid:
            return
        node = message.headers.get(wk.HEADER_NODE, "")
        coro = (self.engine.completed(wid, node, outcome.result) if state == "completed"
                else self.engine.failed(wid, node, outcome.error or "archived"))
        move = asyncio.get_running_loop().create_task(self._move(coro, wid, node))
        self._moves.add(move)
        move.add_done_callback(self._moves.discard)

    async def _move(self, coro: Any, wid: str, node: str) -> None:
        try:
            await coro
            self.moved += 1
        except Exception as exc:  # noqa: BLE001 - recovery finishes what this could not
            self.errors += 1
            log.warning("workflow %s step %s: could not move the workflow on (%s: %s); "
                        "the recovery loop will", wid, node, type(exc).__name__, exc)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for moves under way (at shutdown); what is left, recovery does."""
        if self._moves:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._moves, return_exceptions=True), timeout)

"""The running task's metadata, readable from inside a handler via ``current_task()``."""

from __future__ import annotations

import contextvars
from collections import namedtuple

# A namedtuple, not a dataclass: importing dataclasses (and inspect with it) costs every
# child, and every one_shot task, several milliseconds of start-up.
_Fields = namedtuple("_Fields", "id type queue retry_count max_retry deadline timeout")


class TaskContext(_Fields):
    """What the agent told the child about the task being handled (read-only).

    ``id``, ``type``, ``queue``; ``retry_count`` and ``max_retry``; ``deadline`` is a Unix
    timestamp in seconds (``None`` if the task has none) and ``timeout`` the task's timeout
    in seconds (``None`` if it only has a deadline, or neither).
    """

    __slots__ = ()

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the task is: ``fraction`` from 0 to 1, and an optional short text.

        The agent shows it in ``GET /tasks/{id}``, ``inspect task show`` and ``/status``
        within about 100 ms. Cheap enough for a tight loop: calls are coalesced (see
        ``task_sdk.progress``). Raises ``ValueError``/``TypeError`` for a bad fraction or
        message.
        """
        from .progress import report

        report(self.id, fraction, message)


_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("task_sdk_current_task")


def current_task() -> TaskContext:
    """Return the metadata of the task the calling handler is running.

    Works in async handlers, in sync handlers (which run in worker threads) and in anything
    they call. Raises ``LookupError`` outside a handler.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError(
            "current_task() was called outside a task handler; call it from a function "
            "decorated with @task (or from code that handler calls)"
        ) from None


def _set_current(ctx: TaskContext) -> contextvars.Token[TaskContext]:
    return _current.set(ctx)

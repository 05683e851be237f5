"""Batched handlers: ``@task("embed", batch=32, max_wait=0.01)`` gets a list of payloads.

The agent collects up to ``batch`` tasks of the type (waiting at most ``max_wait`` seconds
for the batch to fill) and sends them to one handler slot in one request line::

    {"batch": "<batch id>", "tasks": [<request>, <request>, ...]}

The handler returns one result per payload, in order. An item fails alone when its result is
an exception instance (``ItemError("bad input")``, ``SkipRetry(...)``, ``RetryAfter(...)`` or
any other exception): only that task is retried or archived. A handler that raises fails
every task of the batch with that error (each retried on its own count). Each task is
answered with its own ordinary answer line (docs/protocol.md).
"""

from __future__ import annotations

import functools
import time

from .context import _set_current
from .errors import RetryAfter, SkipRetry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_BATCH = 10_000
"""The largest ``batch`` a handler may ask for."""


class ItemError(Exception):  # noqa: N818 - reads as what it is: the error of one item
    """The failure of one item of a batch, returned in its place in the result list.

    ``ItemError("no such user", retry=False)`` archives that task at once;
    ``retry=True`` (the default) retries it with asynq's backoff like any other error.
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry


class BatchResultMismatch(Exception):  # noqa: N818 - named for what went wrong
    """A batched handler returned something other than one result per payload."""


def check_options(name: str, batch: Any, max_wait: Any) -> tuple[int, float] | None:
    """``(batch, max_wait)`` validated, or None for an ordinary handler. Raises ValueError /
    TypeError naming the task type and the argument."""
    if batch is None:
        if max_wait is not None:
            raise TypeError(f"@task({name!r}): max_wait= needs batch= (the largest batch)")
        return None
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"@task({name!r}): batch= must be a whole number from 1 to "
                         f"{MAX_BATCH}, got {batch!r}")
    wait = 0.0 if max_wait is None else max_wait
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 60:
        raise ValueError(f"@task({name!r}): max_wait= must be a number of seconds from 0 to 60, "
                         f"got {max_wait!r}")
    return batch, float(wait)


def announce(handlers: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The ready message's ``batch`` member: ``{type: {"size": n, "max_wait": s}}``."""
    return {name: {"size": h.batch[0], "max_wait": h.batch[1]}
            for name, h in handlers.items() if h.batch is not None}


def is_batch(message: dict[str, Any]) -> bool:
    return "tasks" in message


def batch_key(message: dict[str, Any]) -> str | None:
    """The id the child's request loop files a batch under (one slot)."""
    key = message.get("batch")
    return f"batch:{key}" if isinstance(key, str) and key else None


def alone(task_id: str, message: dict[str, Any]) -> dict[str, Any]:
    """A request of a batched type that came on its own, as a batch of one."""
    return {"batch": task_id, "tasks": [message]}


class _Prepared:
    """A batch split into what runs (ids, contexts, payloads) and the answers already due."""

    def __init__(self, server: Any, message: dict[str, Any]) -> None:
        self.answers: list[bytes] = []
        self.ids: list[str] = []
        self.contexts: list[Any] = []
        self.payloads: list[Any] = []
        self.handler: Any = None
        items = message.get("tasks")
        if not isinstance(items, list):
            items = []
        for item in items:
            task_id = item.get("task_id") if isinstance(item, dict) else None
            if not isinstance(task_id, str) or not task_id:
                continue  # nothing to answer it by: the agent times it out
            prepared = server._prepare(task_id, item)
            if isinstance(prepared, bytes):
                self.answers.append(prepared)
                continue
            ctx, handler, payload = prepared
            if self.handler is None:
                self.handler = handler
            if handler is not self.handler or handler.batch is None:
                self.answers.append(_failed(task_id, f"NotBatched: task type {ctx.type!r} has no "
                                            "batched handler here, or differs from the batch's"))
                continue
            self.ids.append(task_id)
            self.contexts.append(ctx)
            self.payloads.append(payload)

    def call(self, server: Any) -> Any:
        """The handler applied to the payloads (a coroutine for an async handler)."""
        handler = self.handler
        _set_current(self.contexts[0])  # current_task() in a batched handler: its first task
        if handler.ctx_mode == "positional":
            return functools.partial(handler.func, self.payloads, server.ctx)
        if handler.ctx_mode == "keyword":
            return functools.partial(handler.func, self.payloads, ctx=server.ctx)
        return functools.partial(handler.func, self.payloads)

    def latest_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self.contexts]
        return None if None in deadlines else max(deadlines)

    def answer(self, server: Any, started: float, results: Any = None,
               error: Exception | None = None) -> bytes:
        """One answer line per task: its result, its own failure, or the batch's failure."""
        from .runner import _success_line

        lines = self.answers
        if error is None and (not isinstance(results, (list, tuple)) or len(results) != len(self.ids)):
            got = (f"{len(results)} results" if isinstance(results, (list, tuple))
                   else f"a {type(results).__name__}")
            error = BatchResultMismatch(f"the batched handler for {self.handler.name!r} "
                               f"returned {got} for {len(self.ids)} payloads; return one result "
                               "per payload, in order")
        for index, (task_id, ctx) in enumerate(zip(self.ids, self.contexts, strict=True)):
            outcome = error if error is not None else results[index]
            if isinstance(outcome, ItemError):
                lines.append(_failed(task_id, outcome.message, retry=outcome.retry,
                                     error_type="ItemError"))
            elif isinstance(outcome, (SkipRetry, RetryAfter)) or _is_deadline(outcome):
                lines.append(server._failure_for(task_id, ctx, started, outcome))
            elif isinstance(outcome, Exception):
                lines.append(_failed(task_id, _line_of(outcome), error_type=type(outcome).__name__))
            else:
                lines.append(_success_line(task_id, outcome))
        return b"".join(lines)


def run_inline(server: Any, message: dict[str, Any]) -> bytes:
    """A batch on the inline (sync, one thread) server."""
    from .runner import _run_coroutine

    batch = _Prepared(server, message)
    if not batch.ids:
        return b"".join(batch.answers)
    started = time.time()
    try:
        results = batch.call(server)()
        if hasattr(results, "__await__"):
            results = _run_coroutine(results)
    except Exception as exc:  # every task of the batch fails with it
        _print_batch_failure(batch, exc)
        return batch.answer(server, started, error=exc)
    return batch.answer(server, started, results)


async def run_async(server: Any, message: dict[str, Any]) -> bytes:
    """A batch on the asyncio server: an async handler under the batch's latest deadline
    (the agent stops the child when an earlier task's deadline passes), a sync one in the
    handler thread pool."""
    import asyncio
    import contextvars

    from .runner import _with_deadline

    batch = _Prepared(server, message)
    if not batch.ids:
        return b"".join(batch.answers)
    started = time.time()
    try:
        call = batch.call(server)
        if batch.handler.is_async:
            results = await _with_deadline(call(), batch.latest_deadline())
        else:
            context = contextvars.copy_context()
            results = await asyncio.get_running_loop().run_in_executor(
                server.executor, context.run, call)
            if hasattr(results, "__await__"):
                results = await _with_deadline(results, batch.latest_deadline())
    except Exception as exc:
        _print_batch_failure(batch, exc)
        return batch.answer(server, started, error=exc)
    return batch.answer(server, started, results)


def _print_batch_failure(batch: _Prepared, exc: Exception) -> None:
    import sys
    import traceback

    if isinstance(exc, (SkipRetry, RetryAfter)) or _is_deadline(exc):
        return
    print(f"task_sdk: batch of {len(batch.ids)} tasks of type {batch.contexts[0].type!r} failed:",
          file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()


def _is_deadline(exc: object) -> bool:
    return isinstance(exc, TimeoutError) and getattr(exc, "_task_sdk_deadline", False)


def _line_of(exc: BaseException) -> str:
    import traceback

    if isinstance(exc, BatchResultMismatch):  # ours: without the module path
        return f"BatchResultMismatch: {exc}"

    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def _failed(task_id: str, error: str, *, retry: bool = True, error_type: str = "NotBatched") -> bytes:
    from .runner import _failure_line

    return _failure_line(task_id, error, retry=retry, error_type=error_type)

"""Async handlers in the inline loop of a child that also has sync handlers.

A child with any sync handler runs ``RUNDOWN_SYNC_THREADS`` handlers at once; with one thread
that is one handler at a time, async ones included, so the inline read-handle-write loop
(no thread pool, no hand-offs) can serve the whole child: an async handler runs to its end on
one event loop kept for the child's life, under its deadline as in the asyncio server. While
it runs, the request channel is watched: a ``cancel`` for it cancels it (the asyncio server's
behaviour); any other line waits for the loop, in order.
"""

from __future__ import annotations

import json
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    from .channel import ProtocolChannel


#: Cancelled timers (a handler's own ``asyncio.timeout``) stay in the loop's heap until a turn
#: of the loop removes them; handlers that never wait give it no turn, so they are swept here.
_SWEEP_AT = 100


def _sweep_timers(loop: Any) -> None:
    """Drop cancelled timers from the loop's heap, as a turn of the loop does when more than
    half of them are cancelled (``BaseEventLoop._run_once``)."""
    import heapq

    scheduled = loop._scheduled
    if loop._timer_cancelled_count * 2 <= len(scheduled):
        return
    kept = []
    for handle in scheduled:
        if handle._cancelled:
            handle._scheduled = False
        else:
            kept.append(handle)
    heapq.heapify(kept)
    loop._scheduled = kept
    loop._timer_cancelled_count = 0


class Cancelled(Exception):  # noqa: N818 - the agent's word, as in the answer
    """The agent cancelled the async handler running inline."""


class InlineAsync:
    """Runs one coroutine at a time on a persistent event loop (see the module docstring)."""

    def __init__(self, channel: ProtocolChannel) -> None:
        import asyncio
        from asyncio.events import _set_running_loop

        self.channel = channel
        self._set_running_loop = _set_running_loop
        self._expired = False
        self.loop: asyncio.AbstractEventLoop = asyncio.new_event_loop()
        self._task: asyncio.Task[Any] | None = None
        self._task_id = ""
        # watched for the child's life: the callback runs only while a handler runs the loop
        self.loop.add_reader(channel._read_fd, self._readable)

    def run(self, task_id: str, coro: Any, deadline: float | None) -> Any:
        """The coroutine's value (its exception raised), cancelled at ``deadline``.

        The task's first step is run here, not by a turn of the loop: a coroutine that
        finishes without waiting (most no-op and short handlers) costs no ``select``, no
        ``run_until_complete`` and no timer. One that waits goes on in the loop, its deadline
        armed then (a timer that cancels it; the cancel is then reported as the deadline's
        ``TimeoutError``, as ``asyncio.timeout`` reports it). The step runs in the task, with
        the loop as the running loop, so ``current_task()``, ``get_running_loop()`` and
        context variables behave as in a turn of the loop."""
        import asyncio

        loop = self.loop
        self._task_id = task_id
        self._expired = False
        task = self._task = loop.create_task(coro)
        timer = None
        try:
            # asyncio's own loop only (a uvloop policy's loop has no such queue): else a plain run
            ready = getattr(loop, "_ready", None)
            if ready is not None and len(ready) == 1:  # only the task's first step is due: run it here
                handle = ready.popleft()
                self._set_running_loop(loop)
                try:
                    handle._run()
                finally:
                    self._set_running_loop(None)
                if task.done():
                    if getattr(loop, "_timer_cancelled_count", 0) > _SWEEP_AT:
                        _sweep_timers(loop)
                    return task.result()
            if deadline is not None:  # armed before the loop runs the task's next step
                timer = loop.call_at(loop.time() + max(deadline - time.time(), 0.0), self._expire, task)
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if self._expired:
                exc = TimeoutError()
                exc._task_sdk_deadline = True  # type: ignore[attr-defined]
                raise exc from None
            raise Cancelled(task_id) from None
        finally:
            self._task = None
            if timer is not None:
                timer.cancel()

    def _expire(self, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self._expired = True
            task.cancel()

    def _readable(self) -> None:
        """Input while the handler runs: read what is there, keep the lines for the inline
        loop, and cancel the handler if one of them cancels it."""
        import os

        channel = self.channel
        data = os.read(channel._read_fd, 65536)
        if not data:  # end of input: the inline loop reads it again once the handler is done
            self.loop.remove_reader(channel._read_fd)
            return
        if channel._partial:
            data = b"".join(channel._partial) + data
            channel._partial = []
        *complete, tail = data.split(b"\n")
        if tail:
            channel._partial.append(tail)
        for line in complete:
            if b"cancel" in line and self._cancels(line):
                if self._task is not None:
                    self._task.cancel()
                continue
            channel._lines.append(line)

    def _cancels(self, line: bytes) -> bool:
        try:
            message = json.loads(line)
        except ValueError:
            return False
        return isinstance(message, dict) and message.get("cancel") == self._task_id

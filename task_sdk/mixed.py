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

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    from .channel import ProtocolChannel


class Cancelled(Exception):  # noqa: N818 - the agent's word, as in the answer
    """The agent cancelled the async handler running inline."""


class InlineAsync:
    """Runs one coroutine at a time on a persistent event loop (see the module docstring)."""

    def __init__(self, channel: ProtocolChannel) -> None:
        import asyncio

        self.channel = channel
        self.loop: asyncio.AbstractEventLoop = asyncio.new_event_loop()
        self._task: asyncio.Task[Any] | None = None
        self._task_id = ""
        # watched for the child's life: the callback runs only while a handler runs the loop
        self.loop.add_reader(channel._read_fd, self._readable)

    def run(self, task_id: str, coro: Any, deadline: float | None) -> Any:
        """The coroutine's value (its exception raised), cancelled at ``deadline``."""
        import asyncio

        from .runner import _with_deadline

        self._task_id = task_id
        self._task = self.loop.create_task(_with_deadline(coro, deadline))
        try:
            return self.loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            raise Cancelled(task_id) from None
        finally:
            self._task = None

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

"""``PrivateChannel``: the two pipes a task_sdk child speaks the protocol over.

The agent makes a request pipe and an answer pipe for every child, passes the child's ends
to it (``pass_fds``) and names them in ``RUNDOWN_PROTOCOL_FDS``. task_sdk moves them to
private descriptors at import and announces itself there; from then on only this channel
carries answers, and the child's stdout is plain output. A child that never touches the
pipes (one written for runqy) keeps speaking over stdin/stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections.abc import Callable

FDS_VARIABLE = "RUNDOWN_PROTOCOL_FDS"


class PrivateChannel:
    """The pipes of one child: made before the spawn, the child's ends closed here after it."""

    def __init__(self) -> None:
        self.child_read, self.agent_write = os.pipe()  # requests: agent -> child
        self.agent_read, self.child_write = os.pipe()  # answers: child -> agent
        self.reader: asyncio.ReadTransport | None = None
        self.writer: asyncio.WriteTransport | None = None
        self.closed = asyncio.Event()  # the answer pipe reached its end (or was let go)

    @property
    def pass_fds(self) -> tuple[int, int]:
        """The descriptors the child inherits (the same numbers in the child)."""
        return (self.child_read, self.child_write)

    def env(self) -> dict[str, str]:
        return {FDS_VARIABLE: f"{self.child_read},{self.child_write}"}

    async def connect(self, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        """Read answers into ``on_data`` (``on_eof`` at their end) and open the request side."""
        loop = asyncio.get_running_loop()
        reader, _ = await loop.connect_read_pipe(
            lambda: _AnswerReader(on_data, self._ended(on_eof)),
            os.fdopen(self.agent_read, "rb", buffering=0),
        )
        writer, _ = await loop.connect_write_pipe(
            asyncio.BaseProtocol, os.fdopen(self.agent_write, "wb", buffering=0)
        )
        self.reader, self.writer = reader, writer  # type: ignore[assignment]

    def spawned(self) -> None:
        """The child holds its ends now: ours go, so its exit is seen as end of input."""
        for fd in (self.child_read, self.child_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child_read = self.child_write = -1

    def answers_waiting(self) -> bool:
        """True when the child has written to the answer pipe and it was not read yet."""
        if self.reader is None or self.reader.is_closing():
            return False
        poller = select.poll()
        poller.register(self.agent_read, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        """Let go of both pipes (a child that does not use them, or one that ended)."""
        self.spawned()
        for transport in (self.reader, self.writer):
            if transport is not None:
                transport.close()
        if self.reader is None:  # never connected: the descriptors are still raw
            for fd in (self.agent_read, self.agent_write):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.closed.set()

    def _ended(self, on_eof: Callable[[], None]) -> Callable[[], None]:
        def ended() -> None:
            if not self.closed.is_set():
                self.closed.set()
                on_eof()

        return ended


class _AnswerReader(asyncio.Protocol):
    def __init__(self, on_data: Callable[[bytes], None], on_end: Callable[[], None]) -> None:
        self._on_data = on_data
        self._on_end = on_end

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_end()

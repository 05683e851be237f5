"""The child's private protocol channel, isolated from everything user code can print.

Under rundown-agent (``RUNDOWN_PROTOCOL_FDS`` names two pipes the agent passed), the SDK
duplicates those pipes to private, non-inheritable descriptors, closes the originals, unsets
the variable and announces the channel on it (``{"status": "channel"}``). Only this channel
carries requests and answers: whatever else the process writes, to fd 1 or anywhere, is
output the agent logs, never an answer. Without the variable (an agent from before the
private channel, or a test speaking over stdin/stdout), the channel is a private duplicate
of the original stdout (fd 1) and stdin (fd 0).

Either way, fd 1 and ``sys.stdout`` are then pointed at stderr and fd 0 at ``/dev/null``, so
``print()``, a C extension writing to fd 1, or a library calling ``input()`` can neither
corrupt nor stall nor steal protocol lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections import deque

TYPE_CHECKING = False  # typing stays unimported: child start-up cost
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
FDS_VARIABLE = "RUNDOWN_PROTOCOL_FDS"
"""``"<read fd>,<write fd>"``: the pipes the agent passed for requests and answers."""


class ProtocolChannel:
    """Reads request lines from the agent and writes JSON lines back to it."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._lines: deque[bytes] = deque()  # complete lines read, not yet returned
        self._partial: list[bytes] = []  # the start of a line whose end has not arrived
        self._write_fd = write_fd
        self._write_lock = threading.Lock()
        self.ready_sent = False

    def read_line(self) -> bytes | None:
        """The next request line (without its newline), or ``None`` at end of input."""
        lines = self._lines
        while True:
            while lines:
                line = lines.popleft().strip()
                if line:
                    return line
            data = os.read(self._read_fd, 65536)
            if not data:
                rest = b"".join(self._partial).strip()
                self._partial = []
                return rest or None
            if b"\n" not in data:
                self._partial.append(data)
                continue
            if self._partial:
                data = b"".join(self._partial) + data
                self._partial = []
            *complete, tail = data.split(b"\n")
            lines.extend(complete)
            if tail:
                self._partial.append(tail)

    def line_waiting(self) -> bool:
        """True when a request line has arrived and not been read (``read_line`` won't block)."""
        lines = self._lines
        while lines and not lines[0].strip():
            lines.popleft()
        return bool(lines)

    def send(self, message: dict[str, Any]) -> None:
        """Write one message as a single compact JSON line."""
        self.send_line(json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n")

    def send_line(self, data: bytes) -> None:
        """Write one already encoded line (it must end with a newline)."""
        view = memoryview(data)
        with self._write_lock:
            while view:
                written = os.write(self._write_fd, view)
                view = view[written:]


_channel: ProtocolChannel | None = None


def protocol_channel() -> ProtocolChannel:
    """The process's protocol channel, isolating stdin/stdout on first use."""
    global _channel
    if _channel is None:
        with contextlib.suppress(OSError, ValueError):  # a closed stdout: nothing to save
            sys.stdout.flush()
        private = _take_private_fds()
        if private is not None:
            read_fd, write_fd = private
        else:
            write_fd = os.dup(1)
            read_fd = os.dup(0)
        os.dup2(2, 1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.set_inheritable(write_fd, False)
        os.set_inheritable(read_fd, False)
        sys.stdout = sys.stderr
        _channel = ProtocolChannel(read_fd, write_fd)
        if private is not None:  # tells the agent this child answers here, not on stdout
            _channel.send({"status": "channel", "protocol": PROTOCOL_VERSION})
    return _channel


def _take_private_fds() -> tuple[int, int] | None:
    """The agent's request and answer pipes as private duplicates (the passed descriptors
    are closed and the variable unset, so nothing this process starts inherits them), or
    None when there are none or they are unusable (then stdin/stdout carry the protocol)."""
    raw = os.environ.pop(FDS_VARIABLE, None)
    if raw is None:
        return None
    try:
        read_fd, write_fd = (int(part) for part in raw.split(","))
        if min(read_fd, write_fd) <= 2 or read_fd == write_fd:
            raise ValueError("two distinct descriptors above 2 expected")
        os.fstat(read_fd)
        os.fstat(write_fd)
    except (ValueError, OSError) as exc:
        print(f"task_sdk: ignoring {FDS_VARIABLE}={raw!r} ({exc}); the protocol uses "
              "stdin/stdout", file=sys.stderr, flush=True)
        return None
    private = os.dup(read_fd), os.dup(write_fd)
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)
    return private


def under_agent() -> bool:
    """True when this process was started by rundown-agent (``RUNDOWN_PROTOCOL`` is set)."""
    return bool(os.environ.get("RUNDOWN_PROTOCOL"))

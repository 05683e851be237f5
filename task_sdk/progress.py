"""``current_task().progress(0.4, "decoded 4 of 10 chunks")``: tell the agent how far a task is.

Each call becomes a ``{"status":"progress","id":...,"progress":0.4,"message":...}`` line
on the protocol channel (docs/protocol.md). Calls are coalesced per task: the first goes out
at once, later ones at most every ``INTERVAL`` seconds, each time the latest value, so a
handler may report from a tight loop: a call that is not written costs a lock, a clock read
and a dict update (about a microsecond). A value still held when its interval ends is
written by a small daemon thread, so the last report of a burst is never lost while the
task runs, and by ``finish()`` just before the task's answer when the task ends first.

Standard library only; the thread starts on the first report that has to wait.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time

from . import channel as _channel_module

INTERVAL = 0.05  #: seconds between two progress lines of one task, at least
MAX_MESSAGE = 1000  #: characters of a progress message kept (the rest is cut)
_PRUNE_AT = 256  #: tasks remembered before the ones that reported long ago are forgotten


def _check(fraction: object, message: object) -> tuple[float, str]:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"progress: the fraction must be a number from 0 to 1, got {type(fraction).__name__}")
    value = float(fraction)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"progress: the fraction must be a number from 0 to 1, got {fraction!r}")
    if message is None:
        text = ""
    elif isinstance(message, str):
        text = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "..."
    else:
        raise TypeError(f"progress: the message must be a string, got {type(message).__name__}")
    return value, text


def _line(task_id: str, value: float, text: str) -> bytes:
    # "id", not "task_id": an agent reads any line with a task_id as that task's answer
    # (older agents would complete the task on a progress report).
    import json

    return json.dumps({"status": "progress", "id": task_id, "progress": value,
                       "message": text}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class _Reporter:
    """Per-task coalescing of progress lines (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_sent: dict[str, float] = {}  # task -> monotonic time of its last line
        self.held: dict[str, tuple[float, str]] = {}  # task -> latest value not yet written
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def report(self, task_id: str, fraction: object, message: object) -> None:
        value, text = _check(fraction, message)
        channel = _channel_module._channel
        if channel is None:  # not under the agent (a handler called directly): nothing to tell
            return
        now = time.monotonic()
        with self.lock:
            last = self.last_sent.get(task_id)
            if last is not None and now - last < INTERVAL:
                self.held[task_id] = (value, text)
                start = self.thread is None
                if start:
                    self.thread = threading.Thread(target=self._run, name="task_sdk-progress",
                                                   daemon=True)
                self.wake.set()
            else:
                start = False
                self.held.pop(task_id, None)
                self.last_sent[task_id] = now
                if len(self.last_sent) > _PRUNE_AT:
                    self._prune(now)
        if start:
            assert self.thread is not None
            self.thread.start()
        if last is None or now - last >= INTERVAL:
            self._send(channel, _line(task_id, value, text))

    def finish(self, task_id: str) -> None:
        """The task answers now: write its held report first (so its last value is not
        lost behind the answer), then forget the task."""
        with self.lock:
            value = self.held.pop(task_id, None)
            self.last_sent.pop(task_id, None)
        channel = _channel_module._channel
        if value is not None and channel is not None:
            self._send(channel, _line(task_id, *value))

    def _prune(self, now: float) -> None:
        for task_id, sent in list(self.last_sent.items()):
            if now - sent >= INTERVAL and task_id not in self.held:
                del self.last_sent[task_id]

    @staticmethod
    def _send(channel: _channel_module.ProtocolChannel, line: bytes) -> None:
        with contextlib.suppress(OSError):  # the agent is gone: the answer fails the same way
            channel.send_line(line)

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            while True:
                with self.lock:
                    if not self.held:
                        break
                    now = time.monotonic()
                    due = {t: v for t, v in self.held.items()
                           if now - self.last_sent.get(t, 0.0) >= INTERVAL}
                    for task_id in due:
                        del self.held[task_id]
                        self.last_sent[task_id] = now
                    wait = 0.0 if due else min(
                        INTERVAL - (now - self.last_sent.get(t, 0.0)) for t in self.held)
                channel = _channel_module._channel
                if channel is not None:
                    for task_id, (value, text) in due.items():
                        self._send(channel, _line(task_id, value, text))
                if wait > 0:
                    time.sleep(wait)


_reporter = _Reporter()


def _after_fork() -> None:  # a forked child (one_shot's zygote) starts with nothing held
    global _reporter
    _reporter = _Reporter()


os.register_at_fork(after_in_child=_after_fork)


def report(task_id: str, fraction: object, message: object = None) -> None:
    """Report ``fraction`` (0 to 1) and ``message`` for the task ``task_id``.

    Raises ``TypeError`` / ``ValueError`` for a fraction that is not a number from 0 to 1 or
    a message that is not a string, so a mistake shows in the handler, not in the agent.
    """
    _reporter.report(task_id, fraction, message)


def finish(task_id: str) -> None:
    """Called as the task's answer is made: see ``_Reporter.finish``. Costs two attribute
    reads when the task never reported progress."""
    reporter = _reporter
    if reporter.last_sent:
        reporter.finish(task_id)

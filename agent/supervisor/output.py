"""``ChildOutput``: what a child writes, read as it arrives.

Answers on stdout go to their task's outcome (the hot path reads a success answer without
the general classification), the ready and error messages to the start-up, everything else
a child prints to the log with its queue and pid; the last stderr lines are kept for error
texts. A mixin of ``Child``: it uses the child's ledger, pending outcomes and pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from typing import TYPE_CHECKING, Any

from agent.supervisor.outcome import Outcome
from agent.supervisor.protocol import (
    LineSplitter,
    Output,
    OversizedLine,
    Ready,
    Response,
    StartupFailed,
    StatusMessage,
    outcome_from_response,
    parse_line,
    success_answer,
    task_id_of_head,
)

if TYPE_CHECKING:
    from agent.supervisor.launch import ChildSpec
    from agent.supervisor.slots import SlotLedger

log = logging.getLogger("agent.supervisor.child")
output_log = logging.getLogger("agent.child")
"""The children's own output: every stderr line, and stdout lines that are not protocol."""

STDERR_LINE_LIMIT = 64 * 1024
_STDERR_LINES_IN_ERRORS = 10


class ChildStartupError(Exception):
    """The child did not become ready; the message says why (the child's own error verbatim,
    its exit code and last stderr lines, or the timeout)."""


class ChildOutput:
    """Reads a child's stdout and stderr (see the module docstring)."""

    spec: ChildSpec
    pid: int | None
    ledger: SlotLedger
    _pending: dict[str, Any]
    _stdout: LineSplitter
    _stderr: LineSplitter
    stderr_tail: deque[str]

    def _stdout_data(self, data: bytes) -> None:
        done = self.tasks_done
        pending = self._pending
        self._reading = True
        try:
            for item in self._stdout.feed(data):
                # the hot path: a success answer for a task we run, without classification
                answer = success_answer(item) if type(item) is bytes else None
                on_outcome = pending.pop(answer[0], None) if answer is not None else None
                if on_outcome is None:
                    self._stdout_line(item)
                    continue
                self._task_finished(answer[0])
                try:
                    on_outcome(answer[1])
                except Exception:  # noqa: BLE001 - the other answers of the chunk still count
                    log.exception("queue %s: handling the answer for task %s failed",
                                  self.spec.queue, answer[0])
        finally:
            self._reading = False
            if self.tasks_done != done:
                self._freed()

    def _stdout_line(self, item: bytes | OversizedLine) -> None:
        if isinstance(item, OversizedLine):
            self._oversized(item)
            return
        for message in parse_line(item):
            if isinstance(message, Response):
                self._answer(message)
            elif isinstance(message, Output):
                self._output(message)
            elif isinstance(message, Ready):
                if self._ready_waiter is not None and not self._ready_waiter.done():
                    self._ready_waiter.set_result(message)
            elif isinstance(message, StartupFailed):
                if self._ready_waiter is not None and not self._ready_waiter.done():
                    self._ready_waiter.set_exception(
                        ChildStartupError(f"startup failed: {message.error}")
                    )
                else:
                    log.warning(
                        "queue %s: child process %s reported an error after start-up: %s",
                        self.spec.queue,
                        self.pid,
                        message.error,
                    )
            elif isinstance(message, StatusMessage):
                log.debug(
                    "queue %s: child process %s status: %s",
                    self.spec.queue,
                    self.pid,
                    message.message,
                )

    def _answer(self, response: Response) -> None:
        on_outcome = self._pending.pop(response.task_id, None)
        if on_outcome is None and response.task_id in self.ledger.running:
            self._task_finished(response.task_id)  # withdrawn: its slot is free again
            return
        if on_outcome is None:
            log.warning(
                "queue %s: child process %s answered task %s, which it is not running "
                "(answered after its deadline, or never sent); answer dropped",
                self.spec.queue,
                self.pid,
                response.task_id,
            )
            return
        self._task_finished(response.task_id)
        on_outcome(outcome_from_response(response))

    def _oversized(self, line: OversizedLine) -> None:
        task_id = task_id_of_head(line.head)
        on_outcome = self._pending.pop(task_id, None) if task_id else None
        log.error(
            "queue %s: child process %s wrote a stdout line of %d bytes, over the limit of %d "
            "bytes; the line was discarded%s",
            self.spec.queue,
            self.pid,
            line.size,
            self.spec.line_limit,
            f" and task {task_id} failed" if on_outcome else "",
        )
        if on_outcome is not None and task_id is not None:
            self._task_finished(task_id)
            on_outcome(
                Outcome(
                    "archive",
                    error=f"ResponseTooLarge: the child's answer was {line.size} bytes, over the "
                    f"agent's line limit of {self.spec.line_limit} bytes; return a smaller "
                    "result (store large data elsewhere and return a reference)",
                )
            )

    def _output(self, message: Output) -> None:
        extra = {"queue": self.spec.queue, "pid": self.pid, "stream": "stdout"}
        if message.note:
            output_log.warning(
                "[%s pid %s] stdout (ignored: %s): %s",
                self.spec.queue,
                self.pid,
                message.note,
                message.text,
                extra=extra,
            )
        else:
            output_log.info(
                "[%s pid %s] stdout: %s", self.spec.queue, self.pid, message.text, extra=extra
            )

    def _stderr_data(self, data: bytes) -> None:
        for item in self._stderr.feed(data):
            self._stderr_line(item)

    def _stderr_line(self, item: bytes | OversizedLine) -> None:
        if isinstance(item, OversizedLine):
            text = item.head.decode("utf-8", errors="replace") + (
                f" ... [line of {item.size} bytes truncated]"
            )
        else:
            text = item.decode("utf-8", errors="replace")
        self.stderr_tail.append(text)
        output_log.info(
            "[%s pid %s] %s",
            self.spec.queue,
            self.pid,
            text,
            extra={"queue": self.spec.queue, "pid": self.pid, "stream": "stderr"},
        )

    def _pipe_closed(self, fd: int) -> None:
        if fd == 1:
            for item in self._stdout.finish():
                self._stdout_line(item)
            self._stdout_eof.set()
            # A one_shot child that answered closes stdout on its way out: nothing is wrong.
            answered = self.one_shot and not self._pending and self.tasks_started
            if self.exit is None and self._stop_reason is None and not answered:
                self._in_background(self._stdout_closed_early())
        elif fd == 2:
            for item in self._stderr.finish():
                self._stderr_line(item)
            self._stderr_eof.set()

    async def _stdout_closed_early(self) -> None:
        """The protocol channel closed but the process lives on: it can never answer again."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), 1.0)
            return
        self._failure_note = "closed its stdout (the protocol channel) and was killed"
        self._signal(signal.SIGKILL)

    def stderr_summary(self) -> str:
        """The last stderr lines, ready to append to an error text ("" if there are none)."""
        if not self.stderr_tail:
            return ""
        lines = list(self.stderr_tail)[-_STDERR_LINES_IN_ERRORS:]
        return "; last stderr lines:\n" + "\n".join(line[:300] for line in lines)

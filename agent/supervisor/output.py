"""``ChildOutput``: what a child writes, read as it arrives.

Answers on the protocol channel go to their task's outcome (the hot path reads a success
answer without the general classification), the ready and error messages to the start-up,
everything else a child prints to the log with its queue and pid; the last stderr lines are
kept for error texts. A mixin of ``Child``: it uses the child's ledger, pending outcomes and
pipes.

Which stream is the protocol channel is decided per child, by the first one to speak: the
private answer pipe (task_sdk announces itself there at import), or stdout when a ready or
error line comes there first (a child written for runqy). Once the private channel is in
use, stdout is only output: a line there that looks like an answer is logged, never obeyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from typing import TYPE_CHECKING, Any

from agent.supervisor.outcome import Outcome
from agent.supervisor.progress import child_progress
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
    from agent.supervisor.channel import PrivateChannel
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
    _answers: LineSplitter
    _private: PrivateChannel | None
    channel: str  # "pending", "private" (task_sdk's pipes) or "stdout" (runqy style)
    stderr_tail: deque[str]

    def _stdout_data(self, data: bytes) -> None:
        if self.channel == "stdout":
            self._protocol_data(self._stdout, data)
            return
        for item in self._stdout.feed(data):
            self._stdout_item(item)

    def _stdout_item(self, item: bytes | OversizedLine) -> None:
        """A stdout line while stdout is not (or not yet) the protocol channel."""
        if self.channel == "pending" and self._claims_stdout(item):
            self._use_channel("stdout")
        if self.channel == "stdout":
            self._protocol_line(item)
        elif isinstance(item, OversizedLine):
            log.error("queue %s: child process %s wrote a stdout line of %d bytes, over the "
                      "limit of %d bytes; the line was discarded", self.spec.queue, self.pid,
                      item.size, self.spec.line_limit)
        else:
            messages = parse_line(item)
            if all(isinstance(message, Output) for message in messages):
                for message in messages:
                    self._output(message)  # type: ignore[arg-type]
            else:  # logged, never obeyed: answers come on the private channel only
                self._output(Output(_text_of(item), note="a protocol message on stdout, which "
                                    "is not this child's protocol channel"))

    def _claims_stdout(self, item: bytes | OversizedLine) -> bool:
        """A ready or start-up error line on stdout, with nothing from task_sdk's private
        channel before it: the child speaks the protocol over stdout."""
        if isinstance(item, OversizedLine) or not any(
                isinstance(m, (Ready, StartupFailed)) for m in parse_line(item)):
            return False
        return self._private is None or not self._private.answers_waiting()

    def _channel_data(self, data: bytes) -> None:
        """What the child wrote on its private answer pipe (task_sdk)."""
        if self.channel == "pending":
            self._use_channel("private")
        if self.channel == "private":
            self._protocol_data(self._answers, data)

    def _protocol_data(self, splitter: LineSplitter, data: bytes) -> None:
        done = self.tasks_done
        pending = self._pending
        self._reading = True
        try:
            for item in splitter.feed(data):
                # the hot path: a success answer for a task we run, without classification
                answer = success_answer(item) if type(item) is bytes else None
                on_outcome = pending.pop(answer[0], None) if answer is not None else None
                if on_outcome is None:
                    self._protocol_line(item)
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

    def _protocol_line(self, item: bytes | OversizedLine) -> None:
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
                else:
                    log.debug("queue %s: child process %s reported ready again; ignored",
                              self.spec.queue, self.pid)
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
            elif isinstance(message, StatusMessage) and message.message.get("status") == "progress":
                child_progress(self.spec, self.ledger, self.pid, message.message)
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
                self._stdout_item(item)
            self._stdout_eof.set()
            if self.channel == "stdout":
                self._protocol_ended()
        elif fd == 2:
            for item in self._stderr.finish():
                self._stderr_line(item)
            self._stderr_eof.set()

    def _channel_closed(self) -> None:
        """The private answer pipe ended (the child exited, or closed it)."""
        if self.channel != "private":
            return
        for item in self._answers.finish():
            self._protocol_line(item)
        self._protocol_ended()

    def _protocol_ended(self) -> None:
        # A one_shot child that answered closes its channel on its way out: nothing is wrong.
        answered = self.one_shot and not self._pending and self.tasks_started
        if self.exit is None and self._stop_reason is None and not answered:
            self._in_background(self._channel_closed_early())

    async def _channel_closed_early(self) -> None:
        """The protocol channel closed but the process lives on: it can never answer again."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), 1.0)
            return
        which = "its stdout" if self.channel == "stdout" else "its private channel"
        self._failure_note = f"closed {which} (the protocol channel) and was killed"
        self._signal(signal.SIGKILL)

    def stderr_summary(self) -> str:
        """The last stderr lines, ready to append to an error text ("" if there are none)."""
        if not self.stderr_tail:
            return ""
        lines = list(self.stderr_tail)[-_STDERR_LINES_IN_ERRORS:]
        return "; last stderr lines:\n" + "\n".join(line[:300] for line in lines)


def _text_of(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")

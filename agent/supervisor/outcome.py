"""What running a task produced, independent of how it was run (child process or not)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from agent.broker import DequeuedTask

OutcomeKind = Literal["success", "retry", "archive", "requeue"]

DEADLINE_EXCEEDED = "context deadline exceeded"
"""asynq's error text for a task past its deadline (Go's ``context.DeadlineExceeded``)."""


def deadline_exceeded(seconds: float, detail: str) -> str:
    """``context deadline exceeded: task exceeded its deadline of 2s (detail)``: asynq's text
    first, which its tooling and users search for, then how long the handler had and why."""
    return (f"{DEADLINE_EXCEEDED}: task exceeded its deadline of {round(max(seconds, 0.0), 3):g}s "
            f"({detail})")


@dataclass(slots=True)
class Outcome:
    """``success``: complete the task (with ``result`` when it has retention);
    ``retry``: a failure that may be retried (archived if retries are exhausted);
    ``archive``: a failure that must not be retried (SkipRetry);
    ``requeue``: put back to pending without counting a retry (the run was cut short
    through no fault of the task)."""

    kind: OutcomeKind
    result: bytes | None = None
    error: str | None = None
    retry_in: float | None = None


class Executor(Protocol):
    """Runs one task to an Outcome before ``deadline`` (unix seconds)."""

    @property
    def healthy(self) -> bool: ...

    async def execute(self, task: DequeuedTask, deadline: float) -> Outcome: ...

    async def cancel(self, task_id: str) -> None: ...

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...

    def status(self) -> list[dict]: ...

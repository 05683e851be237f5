"""Enqueue options and how they compose into a TaskMessage, as ``asynq.Client`` does."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.broker import keys
from agent.broker.messages import TaskMessage

DEFAULT_MAX_RETRY = 25
DEFAULT_TIMEOUT = 1800  # seconds; applied when neither timeout nor deadline is given

Seconds = float | int | timedelta
When = float | int | datetime


def _seconds(value: Seconds | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _unix(value: When | None) -> float | None:
    if value is None:
        return None
    return value.timestamp() if isinstance(value, datetime) else float(value)


@dataclass
class EnqueueOptions:
    """Every option of ``asynq.Client.Enqueue``. Times are Unix seconds or datetimes."""

    queue: str = "default"
    task_id: str | None = None
    max_retry: int = DEFAULT_MAX_RETRY
    timeout: Seconds | None = None
    deadline: When | None = None
    process_at: When | None = None
    process_in: Seconds | None = None
    unique_ttl: Seconds | None = None
    retention: Seconds | None = None
    group: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.queue or not self.queue.strip():
            raise ValueError("queue name must contain a non-whitespace character")
        if self.task_id is not None and not self.task_id.strip():
            raise ValueError("task_id must not be blank")
        if self.group is not None and not self.group.strip():
            raise ValueError("group must not be blank")
        if self.process_at is not None and self.process_in is not None:
            raise ValueError("give process_at or process_in, not both")
        unique = _seconds(self.unique_ttl)
        if unique is not None and unique < 1:
            raise ValueError("unique_ttl must be at least 1 second")
        for name in ("timeout", "retention"):
            value = _seconds(getattr(self, name))
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")

    def process_time(self, now: float) -> float:
        """When the task should run; a time not after now counts as now."""
        delay = _seconds(self.process_in)
        at = now + delay if delay is not None else _unix(self.process_at)
        return at if at is not None and at > now else now


@dataclass(frozen=True)
class EnqueueResult:
    """What was written: the task ID, its queue, its state and when it will run."""

    id: str
    queue: str
    state: str  # pending | scheduled | aggregating
    process_at: int
    message: TaskMessage = field(repr=False, compare=False)


def build_message(task_type: str, payload: bytes | None, opts: EnqueueOptions) -> TaskMessage:
    if not task_type or not task_type.strip():
        raise ValueError("task type must contain a non-whitespace character")
    opts.validate()
    # As in asynq.Client, a zero timeout or deadline means "not set", and with neither set
    # the task gets the 30 min default (a Go server logs an internal error otherwise).
    timeout = int(_seconds(opts.timeout) or 0)
    deadline = int(_unix(opts.deadline) or 0)
    if timeout <= 0 and deadline <= 0:
        timeout = DEFAULT_TIMEOUT
    msg = TaskMessage(
        type=task_type,
        payload=payload or b"",
        id=opts.task_id or str(uuid.uuid4()),
        queue=opts.queue,
        retry=max(0, int(opts.max_retry)),
        timeout=timeout,
        deadline=deadline,
        retention=int(_seconds(opts.retention) or 0),
        group_key=opts.group or "",
    )
    for key, value in opts.headers.items():
        msg.headers[key] = value
    if opts.unique_ttl is not None:
        msg.unique_key = keys.unique_key(opts.queue, task_type, payload)
    return msg


def now_seconds() -> int:
    return int(time.time())

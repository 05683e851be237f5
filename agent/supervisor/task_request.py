"""``TaskRequest``: one task as the child supervisor needs it, independent of Redis."""

from __future__ import annotations

from dataclasses import dataclass

from agent.broker import DequeuedTask
from agent.tracing import ATTEMPTS

DEFAULT_TIMEOUT = 1800.0  # asynq's, for a task with neither a timeout nor a deadline


@dataclass(slots=True)  # not frozen: built per task, and frozen init costs 4x
class TaskRequest:
    """One task to run in a child process.

    ``payload`` is the task's raw payload bytes. ``timeout`` (seconds) counts from the moment
    its handler starts (a task waiting in a child for a slot has used none of it);
    ``deadline`` is the task's absolute deadline (Unix seconds), if it has one. The
    supervisor kills the child a little after ``handler_deadline`` (see
    ``ChildSpec.deadline_grace``).
    """

    task_id: str
    type: str
    payload: bytes = b""
    queue: str = ""
    retry_count: int = 0
    max_retry: int = 0
    deadline: float | None = None
    timeout: float | None = None
    traceparent: str | None = None  # the agent's attempt span, while tracing is on

    def handler_deadline(self, started: float) -> float:
        """When the handler that starts at ``started`` must be done: ``timeout`` seconds
        later, never after ``deadline``; asynq's 30 minutes when the task has neither."""
        if self.timeout:
            limit = started + self.timeout
            return limit if self.deadline is None else min(limit, self.deadline)
        return self.deadline if self.deadline is not None else started + DEFAULT_TIMEOUT

    @classmethod
    def from_dequeued(cls, task: DequeuedTask) -> TaskRequest:
        """The request for a task taken from Redis."""
        message = task.message
        if message is None:
            raise ValueError(f"task {task.id} of queue {task.queue} has no decodable message")
        return cls(
            task_id=task.id,
            type=message.type,
            payload=message.payload,
            queue=task.queue,
            retry_count=message.retried,
            max_retry=message.retry,
            deadline=float(message.deadline) if message.deadline > 0 else None,
            timeout=float(message.timeout) if message.timeout > 0 else None,
            traceparent=ATTEMPTS.get(task.id) if ATTEMPTS else None,
        )

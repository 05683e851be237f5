"""``TaskRequest``: one task as the child supervisor needs it, independent of Redis."""

from __future__ import annotations

from dataclasses import dataclass

from agent.broker import DequeuedTask


@dataclass(slots=True)  # not frozen: built per task, and frozen init costs 4x
class TaskRequest:
    """One task to run in a child process.

    ``payload`` is the task's raw payload bytes. ``deadline`` is the Unix time (seconds) by
    which the task must finish; the supervisor stops the child a little after it (see
    ``ChildSpec.deadline_grace``). ``timeout`` (seconds) is informative: the child receives it
    and error texts quote it.
    """

    task_id: str
    type: str
    payload: bytes = b""
    queue: str = ""
    retry_count: int = 0
    max_retry: int = 0
    deadline: float | None = None
    timeout: float | None = None

    @classmethod
    def from_dequeued(cls, task: DequeuedTask, deadline: float) -> TaskRequest:
        """The request for a task taken from Redis, due by ``deadline`` (Unix seconds)."""
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
            deadline=float(deadline),
            timeout=float(message.timeout) if message.timeout > 0 else None,
        )

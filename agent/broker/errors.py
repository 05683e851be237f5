"""Errors raised by the broker. Messages name the queue and task they concern."""

from __future__ import annotations


class BrokerError(Exception):
    """Base class for every error of the asynq wire layer."""


class TaskIDConflictError(BrokerError):
    """A task with this ID already exists in the queue (in any state)."""

    def __init__(self, queue: str, task_id: str) -> None:
        super().__init__(f"task ID conflicts with another task: {task_id!r} already exists in queue {queue!r}")
        self.queue, self.task_id = queue, task_id


class DuplicateTaskError(BrokerError):
    """The uniqueness lock for this type and payload is held by another task."""

    def __init__(self, queue: str, lock_key: str) -> None:
        super().__init__(f"task already exists: uniqueness lock {lock_key!r} is held in queue {queue!r}")
        self.queue, self.lock_key = queue, lock_key


class TaskNotFoundError(BrokerError):
    def __init__(self, queue: str, task_id: str, detail: str = "") -> None:
        message = f"task {task_id!r} not found in queue {queue!r}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.queue, self.task_id = queue, task_id


class QueueNotFoundError(BrokerError):
    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} not found (it is not in asynq:queues)")
        self.queue = queue


class LeaseLostError(BrokerError):
    """The task is no longer held by us (its lease expired or it was recovered elsewhere)."""

    def __init__(self, queue: str, task_id: str) -> None:
        super().__init__(f"lease lost for task {task_id!r} in queue {queue!r}: outcome not written")
        self.queue, self.task_id = queue, task_id

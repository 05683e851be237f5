"""TaskInfo: a task as read back from its hash, for clients and the inspection CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent.broker.messages import decode_task_message
from agent.broker.progress import PROGRESS_FIELD, decode_progress

FINAL_STATES = frozenset({"completed", "archived"})


@dataclass(frozen=True)
class TaskInfo:
    """A task as stored in Redis. ``state`` is one of asynq's seven states, or ``deleted``
    for a task that succeeded without retention (asynq deletes it)."""

    id: str
    queue: str
    state: str
    type: str = ""
    payload: bytes = b""
    result: bytes | None = None
    retried: int = 0
    max_retry: int = 0
    last_error: str = ""
    last_failed_at: int = 0
    completed_at: int = 0
    next_process_at: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    #: the handler's last ``progress()`` report: {"progress", "message", "updated_at"}, or None
    progress: dict[str, Any] | None = None

    def result_json(self) -> Any:
        return None if self.result is None else json.loads(self.result)


def task_info_from_hash(queue: str, task_id: str, fields: dict[bytes, bytes], score: float | None) -> TaskInfo:
    state = fields.get(b"state", b"").decode()
    raw = fields.get(b"msg")
    msg = decode_task_message(raw) if raw else None
    return TaskInfo(
        id=task_id, queue=queue, state=state,
        type=msg.type if msg else "", payload=msg.payload if msg else b"",
        result=fields.get(b"result"),
        retried=msg.retried if msg else 0, max_retry=msg.retry if msg else 0,
        last_error=msg.error_msg if msg else "", last_failed_at=msg.last_failed_at if msg else 0,
        completed_at=msg.completed_at if msg else 0,
        next_process_at=int(score) if score is not None else 0,
        headers=dict(msg.headers) if msg else {},
        progress=decode_progress(fields.get(PROGRESS_FIELD.encode())),
    )



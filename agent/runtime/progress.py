"""``ProgressBoard``: the latest progress of each task this agent runs, kept for ``/status``
and written to the task's hash in Redis (``agent.broker.progress``).

Children report progress already coalesced (task_sdk sends at most one line per task every
50 ms); the board coalesces again across tasks: the reports of ``FLUSH_DELAY`` seconds go to
Redis in one pipelined round trip, only the latest of each task, each one reported while this
agent held the task, and written while the task is active (or completed, for the report that
came with its answer) in Redis. So a report is readable through Redis (HTTP
``GET /tasks/{id}``, ``inspect task show``) within about 50 + 20 ms plus a round trip, and
an agent that loses a task's lease stops writing its progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.broker import keys
from agent.broker.progress import PROGRESS_FIELD, WRITE_PROGRESS_LUA, encode_progress

log = logging.getLogger("agent.runtime")

FLUSH_DELAY = 0.02  #: seconds a report waits for others to share its round trip
ERROR_LOG_INTERVAL = 30.0  #: seconds between two warnings about failed progress writes


class ProgressBoard:
    """Receives ``(task_id, queue, fraction, message)`` reports (``ChildSpec.on_progress``)."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[str, float, str, float]] = {}  # task -> (queue, fraction, text, at)
        self._dirty: dict[str, tuple[str, float, str, float]] = {}
        self._redis: Any = None
        self._script: Any = None
        self._is_held: Callable[[str], bool] = lambda task_id: True
        self._flushing: asyncio.Task[None] | None = None
        self._last_error_log = 0.0
        self.writes = 0  #: progress values written to Redis
        self.errors = 0

    def attach(self, redis: Any, is_held: Callable[[str], bool]) -> None:
        """Write through ``redis``; ``is_held(task_id)`` tells whether this agent still holds
        the task (its lease not lost, no outcome written yet)."""
        self._redis = redis
        self._script = redis.register_script(WRITE_PROGRESS_LUA)
        self._is_held = is_held

    def report(self, task_id: str, queue: str, fraction: float, message: str) -> None:
        if not self._is_held(task_id):
            return
        entry = (queue, fraction, message, time.time())
        self.latest[task_id] = entry
        self._dirty[task_id] = entry
        if self._redis is not None and self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The task's latest progress (for ``/status``), or None."""
        entry = self.latest.get(task_id)
        if entry is None:
            return None
        _queue, fraction, message, at = entry
        return {"progress": fraction, "message": message, "updated_at": round(at, 3)}

    async def _flush(self) -> None:
        try:
            while self._dirty:
                await asyncio.sleep(FLUSH_DELAY)
                # Held when reported (checked in report()): a report that came with the
                # task's answer is still written, to the completed task.
                batch, self._dirty = self._dirty, {}
                await self._write(batch)
                for task_id in [t for t in self.latest if not self._is_held(t)]:
                    del self.latest[task_id]
        finally:
            self._flushing = None

    async def _write(self, batch: dict[str, tuple[str, float, str, float]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id, (queue, fraction, message, at) in batch.items():
                    await self._script(keys=[keys.task_key(queue, task_id)],
                                       args=[PROGRESS_FIELD, encode_progress(fraction, message, at)],
                                       client=pipe)
                await pipe.execute()
            self.writes += len(batch)
        except Exception as exc:  # noqa: BLE001 - progress is best effort; tasks go on
            self.errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_INTERVAL:
                self._last_error_log = now
                log.warning("writing task progress to Redis failed (%s: %s); it is retried with "
                            "the next report", type(exc).__name__, exc)

"""PeriodicLoop: the shape shared by every background loop of the agent.

Each loop has its own interval, a timeout on every tick (so one stuck Redis call cannot
freeze it), exponential backoff after errors, and a ``stop()`` that returns promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

log = logging.getLogger("agent.runtime")


class PeriodicLoop:
    name = "loop"
    interval = 5.0
    tick_timeout = 10.0
    max_backoff = 30.0

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.last_ok: float = 0.0  # monotonic time of the last successful tick
        self.errors = 0

    async def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self.tick(), self.tick_timeout)
                self.last_ok = time.monotonic()
                failures = 0
                delay = self.interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a loop must survive any error
                failures += 1
                self.errors += 1
                delay = min(self.max_backoff, self.interval * 2 ** min(failures, 6))
                log.warning("%s failed (%s: %s); next try in %.1fs", self.name,
                            type(exc).__name__, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, self.tick_timeout + 1)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()

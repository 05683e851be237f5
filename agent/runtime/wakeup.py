"""Wake-up on new work without polling.

For each queue a waiter blocks on ``BLMOVE pending pending RIGHT RIGHT``: Redis returns
as soon as the list is non-empty and, moving the tail element onto itself, takes
nothing. That works for tasks from any producer (a Go asynq client included), costs no
CPU while idle, and needs no keyspace notifications. Waiters only block while the
processor is idle, so a non-empty queue never makes them spin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis

from agent.broker import keys

log = logging.getLogger("agent.runtime")


class WorkSignal:
    """Set by waiters (and by the forwarder or a freed slot); awaited by the processor."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.idle = asyncio.Event()  # set while the processor found nothing to do

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()


class QueueWaiters:
    """One blocking waiter per queue, each on its own connection from ``client``'s pool."""

    def __init__(self, client: aioredis.Redis, signal: WorkSignal, block_seconds: float = 2.0) -> None:
        self.client = client
        self.signal = signal
        self.block_seconds = block_seconds
        self._tasks: dict[str, asyncio.Task] = {}
        self._stopping = False

    def sync(self, queues: Sequence[str]) -> None:
        """Keep a waiter on exactly these queues (the ones the processor may take from)."""
        wanted = set(queues)
        for queue in list(self._tasks):
            if queue not in wanted:
                self._tasks.pop(queue).cancel()
        for queue in wanted - set(self._tasks):
            self._tasks[queue] = asyncio.create_task(self._wait(queue), name=f"wait:{queue}")

    async def _wait(self, queue: str) -> None:
        key = keys.pending(queue)
        while not self._stopping:
            await self.signal.idle.wait()
            try:
                found = await self.client.blmove(key, key, self.block_seconds, "RIGHT", "RIGHT")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - connection trouble: back off, keep going
                log.debug("waiter for %s: %s", queue, exc)
                await asyncio.sleep(1.0)
                continue
            if found is not None:
                self.signal.notify()
                # Give the processor a moment to wake (it clears ``idle``) before re-arming.
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

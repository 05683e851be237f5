"""Reconciler: finds IDs sitting in ``active`` without a lease and hands them to recovery.

Such IDs are left when a writer died between two commands (runqy's non-atomic dequeue
leaves them; so can a manual edit), and asynq never recovers them. An ID held by a live
agent always has a lease (our dequeue adds both atomically), so this never touches
running work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from agent.broker import Broker
from agent.runtime.loop import PeriodicLoop

log = logging.getLogger("agent.runtime")


class Reconciler(PeriodicLoop):
    name = "reconciler"
    interval = 60.0

    def __init__(self, broker: Broker, queues: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self.broker = broker
        self.queues = queues
        self.fixed = 0

    async def tick(self) -> None:
        for queue in self.queues():
            ids = await self.broker.lease_orphaned_active(queue)
            if ids:
                self.fixed += len(ids)
                log.warning("queue %s: %d active task(s) had no lease; handed to recovery", queue, len(ids))

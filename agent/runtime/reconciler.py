"""Reconciler: finds IDs sitting in ``active`` without a lease and hands them to recovery.

Such IDs are left when a writer died between two commands (runqy's non-atomic dequeue
leaves them; so can a manual edit), and asynq never recovers them. An ID held by a live
agent always has a lease (our dequeue, like asynq's, adds both atomically, and every script
that removes one removes the other), so this never touches running work, and a dead agent
of ours leaves nothing for it: its tasks are the recoverer's. The lease it gives is an hour
old and not fenced, so the next recoverer tick takes the task on asynq's rule. All queues
are checked in one pipelined round trip (one call per 250 queues).
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
        for queue, ids in (await self.broker.lease_orphaned_active_many(list(self.queues()))).items():
            self.fixed += len(ids)
            log.warning("queue %s: %d active task(s) had no lease; handed to recovery", queue, len(ids))

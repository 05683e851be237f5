"""Recoverer: retries or archives tasks whose lease expired (a crashed or stalled agent).

Every ``interval`` (1 s) it asks Redis, in one pipelined round trip, for the leases due for
recovery in up to ``per_tick`` queues (all of them up to 2,000 queues; beyond that a rotating
slice, so each queue is looked at every ceil(queues / per_tick) s). Due means, by Redis's clock:
our leases (fenced: their holder's writes are refused by Redis from 1 s past the lease on)
2 s after they expired; any other lease (a Go asynq server's) 30 s after, asynq's own rule, so
a Go server and we still agree on when its task is abandoned. A task of a dead agent of ours
is back in pending about 10-13 s after the agent died (docs/reliability.md, "Fast recovery").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from agent.broker import Broker
from agent.broker.plans import RECOVERY_INTERVAL, RECOVERY_QUEUES_PER_TICK
from agent.runtime.loop import PeriodicLoop

log = logging.getLogger("agent.runtime")


class Recoverer(PeriodicLoop):
    name = "recoverer"
    interval = RECOVERY_INTERVAL

    def __init__(self, broker: Broker, queues: Callable[[], Sequence[str]],
                 per_tick: int = RECOVERY_QUEUES_PER_TICK) -> None:
        super().__init__()
        self.broker = broker
        self.queues = queues
        self.per_tick = per_tick
        self.recovered = 0
        self._cursor = 0

    def due_queues(self) -> list[str]:
        """This tick's queues: all of them, or the next slice of ``per_tick`` in rotation."""
        queues = list(self.queues())
        if len(queues) <= self.per_tick:
            return queues
        start = self._cursor % len(queues)
        self._cursor = start + self.per_tick
        return (queues[start:] + queues[:start])[:self.per_tick]

    async def tick(self) -> None:
        queues = self.due_queues()
        if not queues:
            return
        for queue, counts in (await self.broker.recover_expired_many(queues)).items():
            moved = counts["retry"] + counts["archived"]
            self.recovered += moved
            log.warning("recovered %d task(s) with an expired lease in queue %s "
                        "(%d to retry, %d archived, %d orphan IDs dropped)",
                        moved, queue, counts["retry"], counts["archived"], counts["orphans"])

"""Recoverer: retries or archives tasks whose lease expired (a crashed or stalled agent).

Same cutoff as asynq (lease expiry + 30 s), so a Go server and we agree on when a task
is abandoned. Runs at start-up and then every ``interval`` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from agent.broker import Broker
from agent.runtime.loop import PeriodicLoop

log = logging.getLogger("agent.runtime")


class Recoverer(PeriodicLoop):
    name = "recoverer"
    interval = 30.0

    def __init__(self, broker: Broker, queues: Callable[[], Sequence[str]], skew: int = 30) -> None:
        super().__init__()
        self.broker = broker
        self.queues = queues
        self.skew = skew
        self.recovered = 0

    async def tick(self) -> None:
        for queue in self.queues():
            counts = await self.broker.recover_expired(queue, self.skew)
            moved = counts["retry"] + counts["archived"]
            if moved or counts["orphans"]:
                self.recovered += moved
                log.warning("recovered %d task(s) with an expired lease in queue %s "
                            "(%d to retry, %d archived, %d orphan IDs dropped)",
                            moved, queue, counts["retry"], counts["archived"], counts["orphans"])

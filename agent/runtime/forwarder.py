"""Forwarder: moves due scheduled and retry tasks to pending, every second.

asynq checks every 5 s; scores are whole seconds, so a 1 s tick runs tasks on time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.broker import Broker
from agent.runtime.loop import PeriodicLoop


class Forwarder(PeriodicLoop):
    name = "forwarder"
    interval = 1.0

    def __init__(self, broker: Broker, queues: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self.broker = broker
        self.queues = queues
        self.forwarded = 0

    async def tick(self) -> None:
        for queue in self.queues():
            self.forwarded += await self.broker.forward(queue)

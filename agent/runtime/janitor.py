"""Janitor: deletes completed tasks whose retention has ended (asynq: every 8 s)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.broker import Broker
from agent.runtime.loop import PeriodicLoop


class Janitor(PeriodicLoop):
    name = "janitor"
    interval = 8.0

    def __init__(self, broker: Broker, queues: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self.broker = broker
        self.queues = queues
        self.deleted = 0

    async def tick(self) -> None:
        for queue in self.queues():
            self.deleted += await self.broker.delete_expired_completed(queue)

"""QueueSampler: reads queue depths and latency every few seconds for /metrics and /status."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from agent.broker import Broker, keys
from agent.runtime.loop import PeriodicLoop

STATES = ("pending", "active", "scheduled", "retry", "archived", "completed")


class QueueSampler(PeriodicLoop):
    name = "queue-sampler"
    interval = 10.0

    def __init__(self, broker: Broker, queues: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self.broker = broker
        self.queues = queues
        self.samples: dict[str, dict] = {}

    async def tick(self) -> None:
        queues = list(self.queues())
        redis = self.broker.redis
        async with redis.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(keys.pending(q))
                pipe.llen(keys.active(q))
                for state in STATES[2:]:
                    pipe.zcard(f"{keys.queue_prefix(q)}{state}")
                pipe.lindex(keys.pending(q), -1)
            replies = await pipe.execute()
        per = len(STATES) + 1
        now_ns = time.time_ns()
        samples: dict[str, dict] = {}
        for i, q in enumerate(queues):
            row = replies[i * per:(i + 1) * per]
            oldest = row[-1]
            latency = 0.0
            if oldest is not None:
                since = await redis.hget(keys.task_key(q, oldest.decode()), "pending_since")
                if since:
                    latency = max(0.0, (now_ns - int(since)) / 1e9)
            samples[q] = {"counts": dict(zip(STATES, row[:-1], strict=True)), "latency": latency}
        self.samples = samples

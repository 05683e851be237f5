"""Throughput, error rate and latency over time, for the overview's sparklines.

asynq keeps only daily counters, so the server samples each queue's ``processed`` and
``failed`` totals every ``interval`` seconds (one pipelined round trip for every queue) and
keeps the last ``points`` samples in memory: rates are the differences between samples.
A restarted server starts a fresh history.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from agent.broker import keys
from agent.runtime.loop import PeriodicLoop

log = logging.getLogger("server.dashboard")

INTERVAL = 2.0
POINTS = 300  #: 10 minutes at 2 s
MAX_QUEUES = 10_000


@dataclass(frozen=True)
class Sample:
    at: float
    processed: int
    failed: int
    pending: int


class Sampler(PeriodicLoop):
    name = "dashboard-sampler"

    def __init__(self, client: aioredis.Redis, queues: Callable[[], Sequence[str]] | None = None, *,
                 interval: float = INTERVAL, points: int = POINTS) -> None:
        super().__init__()
        self.client = client
        self.queues = queues or (lambda: [])
        self.interval = interval
        self.points = points
        self.history: dict[str, deque[Sample]] = {}

    async def tick(self) -> None:
        try:
            await self.sample()
        except (redis.exceptions.RedisError, OSError) as exc:  # Redis away: the next tick tries
            log.debug("dashboard sample failed: %s", type(exc).__name__)

    async def sample(self) -> None:
        """One sample of every configured queue and every other queue in ``asynq:queues``
        (a Go producer's, say), at most ``MAX_QUEUES`` of them."""
        names = list(self.queues())
        known = set(names)
        extra = sorted(q.decode(errors="replace") for q in await self.client.smembers(keys.ALL_QUEUES))
        names += [q for q in extra if q not in known]
        names = names[:MAX_QUEUES]
        if not names:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for q in names:
                pipe.get(keys.processed_total(q))
                pipe.get(keys.failed_total(q))
                pipe.llen(keys.pending(q))
            values = await pipe.execute()
        now = time.time()
        for i, q in enumerate(names):
            ring = self.history.setdefault(q, deque(maxlen=self.points))
            ring.append(Sample(now, int(values[3 * i] or 0), int(values[3 * i + 1] or 0),
                               int(values[3 * i + 2])))

    def rates(self, queue: str) -> tuple[list[float], list[float]]:
        """(tasks processed per second, failures per second) between consecutive samples."""
        ring = list(self.history.get(queue, ()))
        done: list[float] = []
        failed: list[float] = []
        for a, b in zip(ring, ring[1:], strict=False):
            span = max(b.at - a.at, 1e-3)
            done.append(max(0, b.processed - a.processed) / span)  # a counter wrap reads as 0
            failed.append(max(0, b.failed - a.failed) / span)
        return done, failed


def sparkline(values: Sequence[float], width: int = 120, height: int = 24) -> str:
    """The ``points`` attribute of an SVG polyline drawing ``values`` (empty: a flat line)."""
    if len(values) < 2:
        return f"0,{height - 1} {width},{height - 1}"
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    return " ".join(f"{i * step:.1f},{height - 1 - (v / top) * (height - 2):.1f}"
                    for i, v in enumerate(values))

"""The scheduler every agent runs: it enqueues each entry's ticks as they fall due.

Every agent of a fleet may run it with the same entries; a tick's task is claimed in Redis
(``store.SchedulerStore.enqueue_ticks``), so it is enqueued once whichever agents are alive,
and on time as long as one of them is. Nothing is elected and nothing fails over: an agent
that dies leaves the others enqueuing as before.

Missed ticks (due while no scheduler ran, or while this one was stalled): only the latest due
tick of an entry is ever enqueued. At start, an entry with ``missed: run_once`` whose latest
due tick was never enqueued (and that ran before: it has an enqueue history) gets that tick
enqueued at once; with ``missed: skip`` (the default) its next tick is the first one due after
the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.scheduler.entries import ScheduleEntry
from agent.scheduler.store import SchedulerStore

log = logging.getLogger("agent.scheduler")

PUBLISH_EVERY = 5.0  #: seconds between writes of the entries to asynq:schedulers
RETRY_DELAY = 0.2  #: seconds before a failed enqueue is tried again (still the latest tick)


class Scheduler:
    """Runs as one of the agent's background loops (``start()`` / ``stop()``)."""

    name = "scheduler"

    def __init__(self, redis: Any, entries: Sequence[ScheduleEntry],
                 clock: Callable[[], float] = time.time) -> None:
        self.entries = list(entries)
        self.store = SchedulerStore(redis)
        self.clock = clock
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.last_ok = 0.0
        self.errors = 0
        self.enqueued = 0  #: ticks this agent enqueued
        self.claimed_elsewhere = 0  #: due ticks another agent had enqueued first
        self._next: dict[str, int] = {}
        self._prev: dict[str, int | None] = {}

    def start(self) -> None:
        if self.entries:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def status(self) -> dict[str, Any]:
        return {"entries": len(self.entries), "enqueued": self.enqueued,
                "claimed_elsewhere": self.claimed_elsewhere, "errors": self.errors}

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._prepare()
                break
            except Exception as exc:  # noqa: BLE001 - Redis down at start: keep trying
                self.errors += 1
                log.warning("scheduler: could not read its state (%s: %s); trying again",
                            type(exc).__name__, exc)
                await self._sleep(1.0)
        publisher = asyncio.create_task(self._publish_loop(), name="scheduler-publish")
        try:
            await self._tick_loop()
        finally:
            publisher.cancel()

    async def _prepare(self) -> None:
        now = self.clock()
        await self.store.register_queues(self.entries)
        last = await self.store.last_enqueued(self.entries)
        for entry, prev in zip(self.entries, last, strict=True):
            self._prev[entry.id] = prev
            self._next[entry.id] = entry.next_tick(now)
        catch_up = [(e, e.prev_tick(now)) for e, prev in zip(self.entries, last, strict=True)
                    if e.missed == "run_once" and prev is not None]
        if catch_up:
            done = await self.store.claimed(catch_up)
            missed = [pair for pair, was in zip(catch_up, done, strict=True) if not was]
            if missed:
                log.info("scheduler: %d entr%s missed ticks while no scheduler ran: enqueuing "
                         "the latest of each once (missed: run_once)", len(missed),
                         "y" if len(missed) == 1 else "ies")
                await self._enqueue(missed)
        log.info("scheduler: %d periodic task entr%s", len(self.entries),
                 "y" if len(self.entries) == 1 else "ies")

    async def _tick_loop(self) -> None:
        heap = [(self._next[e.id], i) for i, e in enumerate(self.entries)]
        heapq.heapify(heap)
        while not self._stopping.is_set():
            now = self.clock()
            due_at = heap[0][0]
            if due_at > now:
                await self._sleep(due_at - now)
                continue
            popped: list[int] = []
            while heap and heap[0][0] <= now:
                popped.append(heapq.heappop(heap)[1])
            # the latest due tick only: older ones were missed (a stall), never run late
            due = [(self.entries[i], self.entries[i].prev_tick(now)) for i in popped]
            try:
                await self._enqueue(due)
            except Exception as exc:  # noqa: BLE001 - try the (still latest) ticks again soon
                self.errors += 1
                log.warning("scheduler: enqueuing %d tick(s) failed (%s: %s); trying again",
                            len(due), type(exc).__name__, exc)
                for i in popped:
                    heapq.heappush(heap, (self._next[self.entries[i].id], i))
                await self._sleep(RETRY_DELAY)
                continue
            for i in popped:
                entry = self.entries[i]
                self._next[entry.id] = entry.next_tick(now)
                heapq.heappush(heap, (self._next[entry.id], i))
            self.last_ok = time.monotonic()

    async def _enqueue(self, due: list[tuple[ScheduleEntry, int]]) -> None:
        for result in await self.store.enqueue_ticks(due, self.clock()):
            self._prev[result.entry.id] = result.tick
            if result.enqueued:
                self.enqueued += 1
            else:
                self.claimed_elsewhere += 1

    async def _publish_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                rows = [(e, self._next[e.id], self._prev.get(e.id)) for e in self.entries]
                await self.store.publish(rows, self.clock())
            except Exception as exc:  # noqa: BLE001
                log.warning("scheduler: publishing the entries failed (%s: %s)", type(exc).__name__, exc)
            await self._sleep(PUBLISH_EVERY)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), max(0.0, seconds))

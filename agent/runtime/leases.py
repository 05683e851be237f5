"""LeaseKeeper: renews the lease of every in-flight task from its own OS thread.

A thread with its own synchronous Redis connection keeps leases alive even when the
event loop is busy (a burst of results, a slow callback), which an asyncio timer could
not promise. It does not keep a *stuck* agent alive forever: it renews only while the
event loop has ticked recently (``loop_alive``), so a wedged agent loses its leases and
its tasks are recovered by others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import redis

from agent.broker import DequeuedTask, keys
from agent.broker.plans import LEASE_SECONDS

log = logging.getLogger("agent.runtime")


class LeaseKeeper:
    def __init__(self, client: redis.Redis, interval: float = 5.0, lease_seconds: int = LEASE_SECONDS,
                 loop_alive: Callable[[], bool] = lambda: True,
                 on_lost: Callable[[DequeuedTask], None] = lambda task: None) -> None:
        self.client = client
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.loop_alive = loop_alive
        self.on_lost = on_lost
        self._tasks: dict[str, DequeuedTask] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.extensions = 0
        self.losses = 0
        self.errors = 0

    def add_many(self, tasks: list[DequeuedTask]) -> None:
        with self._lock:
            held = self._tasks
            for task in tasks:
                held[task.id] = task

    def remove_many(self, tasks: list[DequeuedTask]) -> None:
        with self._lock:
            held = self._tasks
            for task in tasks:
                if held.get(task.id) is task:
                    del held[task.id]

    def remove(self, task: DequeuedTask) -> None:
        self.remove_many([task])

    def held(self) -> list[DequeuedTask]:
        with self._lock:
            return list(self._tasks.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.loop_alive():
                log.error("event loop unresponsive: not renewing leases, so other agents can recover our tasks")
                continue
            try:
                self.renew_once()
            except Exception as exc:  # noqa: BLE001 - keep the thread alive; leases run out if this persists
                self.errors += 1
                log.warning("lease renewal failed: %s: %s", type(exc).__name__, exc)

    def renew_once(self) -> None:
        """Extend every live lease to now + lease_seconds; report leases we no longer hold."""
        now = time.time()
        by_queue: dict[str, list[DequeuedTask]] = defaultdict(list)
        for task in self.held():
            if task.lease_valid(now):
                by_queue[task.queue].append(task)
            else:
                self._lost(task)
        if not by_queue:
            return
        expiry = int(now) + self.lease_seconds
        pipe = self.client.pipeline(transaction=False)
        for queue, tasks in by_queue.items():
            ids = [t.id for t in tasks]
            pipe.zadd(keys.lease(queue), dict.fromkeys(ids, expiry), xx=True)
            pipe.zmscore(keys.lease(queue), ids)
        replies = pipe.execute()
        for (_queue, tasks), scores in zip(by_queue.items(), replies[1::2], strict=True):
            for task, score in zip(tasks, scores, strict=True):
                if score is not None:
                    task.lease_expiry = expiry
                    self.extensions += 1
                elif self._holds(task):  # still ours, yet gone from the lease set: recovered elsewhere
                    task.lease_expiry = 0
                    self._lost(task)
                # else: it finished (its outcome removed the lease) while we were renewing

    def _holds(self, task: DequeuedTask) -> bool:
        with self._lock:
            return self._tasks.get(task.id) is task

    def _lost(self, task: DequeuedTask) -> None:
        """Tell the processor; it logs and counts the loss if the task was still running."""
        self.remove(task)
        self.losses += 1
        self.on_lost(task)

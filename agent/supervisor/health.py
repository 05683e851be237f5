"""Crash accounting for a pool of children: restart backoff and the healthy flag."""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("agent.supervisor")


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart crashed children and when to give up taking tasks.

    The n-th crash in a row waits ``initial_delay * factor**(n-1)`` (capped at ``max_delay``),
    randomised by +-``jitter`` (a fraction). A crash more than ``crash_window`` seconds after
    the previous one, or after a task was served since it, starts the sequence again.
    ``max_crashes`` crashes (or failed restarts) in a row within ``crash_window`` make the pool
    unhealthy: it takes no tasks until a restart, tried with the same backoff, succeeds.
    """

    initial_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2
    crash_window: float = 60.0
    max_crashes: int = 5

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("restart delays must satisfy 0 <= initial_delay <= max_delay")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("restart factor must be >= 1 and jitter in [0, 1)")
        if self.crash_window <= 0 or self.max_crashes < 1:
            raise ValueError("crash_window must be > 0 and max_crashes >= 1")


class CrashTracker:
    """Counts crashes in the sliding window and says how long to wait before a restart."""

    def __init__(
        self,
        policy: RestartPolicy,
        queue: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.queue = queue
        self.healthy = True
        self.last_error = ""
        self._clock = clock
        self._rand = rand
        self._recent: deque[float] = deque()
        self._streak = 0
        self._last_crash: float | None = None
        self._served = False

    def record(self, error: str) -> None:
        """A child crashed, or a (re)start failed."""
        now = self._clock()
        policy = self.policy
        if self._served or self._last_crash is None or now - self._last_crash > policy.crash_window:
            # Tasks were served since the last crash (or it was long ago): not a crash loop.
            # A task that crashes its child is failed on its own; the backoff and the guard
            # are for children that cannot serve at all.
            self._streak = 0
            self._recent.clear()
        self._served = False
        self._streak += 1
        self._last_crash = now
        self.last_error = error
        self._recent.append(now)
        while self._recent and now - self._recent[0] > policy.crash_window:
            self._recent.popleft()
        if self.healthy and len(self._recent) >= policy.max_crashes:
            self.healthy = False
            log.error(
                "queue %s: %d child crashes within %gs; taking no tasks until a restart "
                "succeeds. Last error: %s",
                self.queue,
                len(self._recent),
                policy.crash_window,
                error,
            )

    def served(self) -> None:
        """A child finished a task: the crashes before it were not a crash loop."""
        self._served = True

    def recovered(self) -> None:
        """A (re)start succeeded: an unhealthy pool becomes healthy with a fresh window."""
        if self.healthy:
            return
        log.warning("queue %s: child restarted; taking tasks again", self.queue)
        self.healthy = True
        self._recent.clear()

    def next_delay(self) -> float:
        """Seconds to wait before the next restart attempt."""
        policy = self.policy
        steps = max(self._streak - 1, 0)
        delay = min(policy.max_delay, policy.initial_delay * policy.factor**steps)
        return max(0.0, delay * (1 + policy.jitter * (2 * self._rand() - 1)))

    def describe(self) -> str:
        """Why the pool is unhealthy, for ``PoolUnavailable``."""
        return (
            f"queue {self.queue!r}: child processes failed {len(self._recent)} times within "
            f"{self.policy.crash_window:g}s; taking no tasks until a restart succeeds "
            f"(last error: {self.last_error})"
        )


class Capacity:
    """Handlers running at once across every pool of the agent, against ``limit``
    (``worker.concurrency``). Children count a task when its handler starts and uncount it
    when its slot frees; the pools start a task only while ``room`` is positive."""

    __slots__ = ("limit", "running")

    def __init__(self, limit: int | float = float("inf")) -> None:
        self.limit = limit
        self.running = 0

    @property
    def room(self) -> int | float:
        return self.limit - self.running


class CrashSuspects:
    """Who to blame when a child dies of a cause no single task can be tied to (a crash or
    its memory limit) while several handlers ran in it.

    With one handler running, that task is guilty. With several, none of them is charged
    the first time: they go back to their queue as suspects; a task already suspected once
    is guilty the next time. A task that kills its child (alone or beside others) thus
    fails after at most two deaths here, and its neighbours never pay for it twice.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._seen: dict[str, None] = {}
        self._keep = keep

    def guilty(self, running: list[str]) -> list[str]:
        if len(running) <= 1:
            return running
        guilty = [task_id for task_id in running if task_id in self._seen]
        for task_id in running:
            self._seen[task_id] = None
        while len(self._seen) > self._keep:
            del self._seen[next(iter(self._seen))]
        return guilty


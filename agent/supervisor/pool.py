"""``ChildPool``: the interface both process modes share, and the processor's ``Executor``."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from agent.broker import DequeuedTask
from agent.supervisor.child import Child
from agent.supervisor.launch import ChildSpec
from agent.supervisor.outcome import Outcome
from agent.supervisor.task_request import TaskRequest


class PoolUnavailable(Exception):  # noqa: N818 - reads as a state, like asyncio's InvalidState
    """The pool takes no tasks now: it is unhealthy (repeated crashes), stopping, or not
    started. The message says which, and the last error."""


class ChildPool(ABC):
    """The child processes of one queue (or deployment).

    ``run()`` is the core call; ``execute()`` and ``cancel()`` make a pool usable as the
    processor's ``Executor``.
    """

    spec: ChildSpec

    @property
    @abstractmethod
    def healthy(self) -> bool:
        """True when ``run()`` will take a task (started, not stopping, not crash-looping)."""

    @abstractmethod
    async def start(self) -> None:
        """Start the pool; raises ``ChildStartupError`` if its children cannot start."""

    @abstractmethod
    async def run(self, request: TaskRequest) -> Outcome:
        """Run one task to its outcome. Raises ``PoolUnavailable`` when not ``healthy``;
        everything a child does (crash, hang, garbage) becomes an outcome instead."""

    @abstractmethod
    async def cancel(self, task_id: str) -> None:
        """Ask for a running task to be cancelled (best effort; see docs/protocol.md)."""

    @abstractmethod
    async def stop(self, grace: float | None = None) -> None:
        """Stop every child (SIGTERM, SIGKILL after ``grace``, default ``spec.stop_grace``).
        Tasks still in flight get ``requeue`` outcomes. Drain first if they should finish."""

    @abstractmethod
    def status(self) -> list[dict[str, Any]]:
        """One dict per child: pid, state, uptime, tasks_done, in_flight, max_in_flight, rss."""

    def try_submit(self, request: TaskRequest, on_outcome: Callable[[Outcome], None]) -> bool:
        """Start the task now if that needs no waiting, and call ``on_outcome`` with its
        outcome later; False if it cannot (then use ``run()``). Pools without a
        callback path always answer False."""
        return False

    def start_task(self, task: DequeuedTask, on_outcome: Callable[[Outcome], None]) -> bool:
        """The processor's hot path: ``try_submit`` for a task taken from Redis."""
        return self.try_submit(TaskRequest.from_dequeued(task), on_outcome)

    def placeable(self, room: int | float) -> int:
        """How many tasks the pool can take now, ``room`` handlers being allowed to start
        (the processor fetches no more)."""
        return int(room) if self.healthy else 0

    def running(self) -> int:
        """Handlers running now."""
        return 0

    def handler_started(self, task_id: str) -> bool:
        """True when the task's handler runs now (not waiting for a slot)."""
        return True

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Let the running handlers finish (up to ``timeout``), start nothing more, then
        stop every child; returns once all have exited (every task has its outcome)."""
        await self.stop()

    def withdraw(self, task_id: str) -> bool:
        """Forget a task started by ``try_submit`` (its ``on_outcome`` is never called) and
        ask its child to cancel it; False if it is not running."""
        return False

    async def execute(self, task: DequeuedTask, deadline: float) -> Outcome:
        """The processor's ``Executor.execute``: ``run()`` for a task taken from Redis
        (the pool times the handler from its start; ``deadline`` is not used).

        A pool that cannot take the task answers ``requeue`` (no retry counted).
        """
        try:
            return await self.run(TaskRequest.from_dequeued(task))
        except PoolUnavailable as exc:
            return Outcome("requeue", error=str(exc))


async def wait_unless_hurried(done: asyncio.Future[Any], timeout: float,
                              hurry: asyncio.Event | None) -> None:
    """Wait up to ``timeout`` for ``done``, less if ``hurry`` is set first (a second stop
    signal); ``done`` itself is left running."""
    waits: list[asyncio.Future[Any]] = [done]
    if hurry is not None:
        waits.append(asyncio.ensure_future(hurry.wait()))
    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits[1:]:
        wait.cancel()


async def wait_then_kill(children: list[Child], timeout: float, hurry: asyncio.Event | None) -> None:
    """Wait up to ``timeout`` for the children to exit (``hurry`` cuts it short), SIGKILL
    those left, and wait (2 s at most) until they have exited."""
    exits = asyncio.ensure_future(asyncio.gather(*(c.wait_exited() for c in children)))
    await wait_unless_hurried(exits, timeout, hurry)
    for child in children:
        child.kill("the agent's shutdown timeout passed")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(exits), 2.0)
    exits.cancel()


"""``LongRunningPool``: ``processes`` warm children per queue, restarted when they crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from agent.supervisor.child import Child, ChildExit, ChildStartupError
from agent.supervisor.health import CrashTracker, RestartPolicy
from agent.supervisor.launch import ChildSpec
from agent.supervisor.outcome import Outcome
from agent.supervisor.pool import ChildPool, PoolUnavailable
from agent.supervisor.task_request import TaskRequest

log = logging.getLogger("agent.supervisor")


class LongRunningPool(ChildPool):
    """Keeps ``processes`` children ready and sends each task to the least busy one.

    Each of the ``processes`` slots has a keeper that replaces its child when the child is
    retired: at once after a deliberate stop (deadline overrun, recycling), after a backoff
    after a crash. ``max_crashes`` crashes within ``crash_window`` make the pool unhealthy
    until a restart succeeds.
    """

    def __init__(
        self, spec: ChildSpec, processes: int = 1, restart: RestartPolicy | None = None
    ) -> None:
        if processes < 1:
            raise ValueError(f"queue {spec.queue!r}: processes must be >= 1, got {processes}")
        self.spec = spec
        self.processes = processes
        self.crashes = CrashTracker(restart or RestartPolicy(), spec.queue)
        self._children: set[Child] = set()  # every child not yet exited
        self._serving: list[Child] = []  # ready children that take tasks
        self._waiters: list[asyncio.Future[None]] = []
        self._keepers: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()

    @property
    def healthy(self) -> bool:
        return self._started and not self._stopping and self.crashes.healthy

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start ``processes`` children and wait until all are ready.

        Raises ``ChildStartupError`` (the first child's error) if any fails; the others are
        stopped, and ``start()`` may be called again.
        """
        if self._started:
            return
        results = await asyncio.gather(
            *(self._spawn() for _ in range(self.processes)), return_exceptions=True
        )
        children = [r for r in results if isinstance(r, Child)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(c.stop(reason="pool start failed") for c in children))
            raise failure
        self._started = True
        for child in children:
            self._serve(child)
            keeper = asyncio.create_task(self._keep(child), name=f"child-keeper:{self.spec.queue}")
            self._keepers.add(keeper)
        log.info(
            "queue %s: %d child process(es) ready (pids %s)",
            self.spec.queue,
            len(children),
            ", ".join(str(c.pid) for c in children),
        )

    async def stop(self, grace: float | None = None) -> None:
        self._stopping = True
        self._stopped.set()
        self._wake_waiters()
        await asyncio.gather(
            *(c.stop(grace, reason="the agent is shutting down") for c in list(self._children))
        )
        for task in (*self._keepers, *self._background):
            task.cancel()
        await asyncio.gather(*self._keepers, *self._background, return_exceptions=True)
        self._serving.clear()

    async def _spawn(self) -> Child:
        child = Child(self.spec, on_exit=self._child_exited, on_free=self._child_free)
        self._children.add(child)
        try:
            await child.start()
        except BaseException:
            self._children.discard(child)
            raise
        return child

    def _serve(self, child: Child) -> None:
        self._serving.append(child)
        self._wake_waiters()

    def _child_free(self) -> None:
        """A child finished a task: a ``run()`` waiting for room may go on, and the crash
        accounting knows the pool serves."""
        self.crashes.served()
        if self._waiters:
            self._wake_waiters()

    def _child_exited(self, child: Child, exit: ChildExit) -> None:
        self._children.discard(child)
        if child in self._serving:
            self._serving.remove(child)
        if not exit.expected and child.ready is not None and not self._stopping:
            self.crashes.record(f"child process {child.pid} {exit.description}")
            self._wake_waiters()

    async def _keep(self, child: Child) -> None:
        """One slot: replace its child whenever the child is retired."""
        while True:
            await child.retired.wait()
            if child in self._serving:
                self._serving.remove(child)
            if self._stopping:
                return
            if child.exit is None and child.state == "draining":
                self._in_background(child.retire())
            crashed = child.exit is not None and not child.exit.expected
            replacement = await self._replacement(after_crash=crashed)
            if replacement is None:
                return
            child = replacement

    async def _replacement(self, *, after_crash: bool) -> Child | None:
        delay = self.crashes.next_delay() if after_crash else 0.0
        while not self._stopping:
            if delay > 0:
                log.info("queue %s: restarting a child process in %.2fs", self.spec.queue, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), delay)
                if self._stopping:
                    return None
            try:
                child = await self._spawn()
            except ChildStartupError as exc:
                if self._stopping:
                    return None
                self.crashes.record(f"restart failed: {exc}")
                log.warning("queue %s: child process restart failed: %s", self.spec.queue, exc)
                self._wake_waiters()
                delay = self.crashes.next_delay()
                continue
            if self._stopping:
                await child.stop(reason="the agent is shutting down")
                return None
            self.crashes.recovered()
            self._serve(child)
            return child
        return None

    # -- tasks ----------------------------------------------------------------------------

    async def run(self, request: TaskRequest) -> Outcome:
        child = await self._pick(request)
        if child is None:
            return Outcome(
                "retry",
                error="timeout: task exceeded its deadline while waiting for a free child process",
            )
        try:
            return await child.run(request)
        finally:
            self._wake_waiters()

    def try_submit(self, request: TaskRequest, on_outcome: Callable[[Outcome], None]) -> bool:
        """Send the task to the least busy child at once if one has room (the hot path: no
        task or future); False when none has, or the pool takes nothing now (``run()``
        then waits or raises)."""
        if not self.healthy:
            return False
        best = self._least_busy()
        return best is not None and best.submit(request, on_outcome)

    def withdraw(self, task_id: str) -> bool:
        """Stop waiting for a task sent by ``try_submit`` (the child is asked to cancel it)."""
        for child in self._children:
            if child.withdraw(task_id):
                self._wake_waiters()
                return True
        return False

    def _least_busy(self) -> Child | None:
        best: Child | None = None
        for child in self._serving:
            if child.in_flight < child.max_in_flight and (
                best is None or child.in_flight < best.in_flight
            ):
                best = child
        return best

    async def _pick(self, request: TaskRequest) -> Child | None:
        """The serving child with the fewest tasks in flight; waits while all are full."""
        while True:
            if not self._started or self._stopping:
                state = "stopping" if self._stopping else "not started"
                raise PoolUnavailable(f"queue {self.spec.queue!r}: the child pool is {state}")
            if not self.crashes.healthy:
                raise PoolUnavailable(self.crashes.describe())
            best = self._least_busy()
            if best is not None:
                return best
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            timeout = None if request.deadline is None else request.deadline - time.time()
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                return None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _wake_waiters(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def cancel(self, task_id: str) -> None:
        for child in list(self._children):
            if child.running(task_id):
                await child.cancel(task_id)
                return

    def status(self) -> list[dict[str, Any]]:
        return [c.status() for c in sorted(self._children, key=lambda c: c.pid or 0)]

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

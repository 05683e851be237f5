"""``OneShotPool``: a fresh child process for every task (isolation, resource limits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from agent.supervisor.child import Child, ChildStartupError
from agent.supervisor.health import Capacity, CrashTracker, RestartPolicy
from agent.supervisor.launch import ChildSpec
from agent.supervisor.outcome import Outcome
from agent.supervisor.pool import ChildPool, PoolUnavailable, wait_then_kill
from agent.supervisor.task_request import TaskRequest
from agent.supervisor.zygote import ForkedChild, Zygote

log = logging.getLogger("agent.supervisor")


class OneShotPool(ChildPool):
    """Starts a child per task: ready, one request, its request channel closed, the
    answer, the exit.

    The spec's rlimits apply to these children. A child that fails to start leaves its task
    ``requeue``d (the task never ran); ``max_crashes`` such failures within ``crash_window``
    make the pool unhealthy, and a background probe (a child started and stopped with the
    restart backoff) makes it healthy again. A crash while running a task is that task's
    failure only (``retry``). ``capacity`` bounds how many run at once: a task counts from
    the moment the pool accepts it (``try_submit``), its process still starting.

    ``start``: ``fork`` (the default) has a warm zygote of the deployment fork each task's
    process (zygote.py; ``load``: ``per_task`` runs ``@load`` in every such process,
    ``inherit`` once in the zygote); the pool falls back to ``exec`` (a fresh interpreter per
    task) when the zygote says forking is unsafe in it.
    """

    def __init__(self, spec: ChildSpec, restart: RestartPolicy | None = None,
                 *, capacity: Capacity | None = None, start: str = "fork",
                 load: str = "per_task") -> None:
        self.spec = spec
        self.capacity = capacity or Capacity()
        self._starting = 0  # tasks accepted whose child has not been sent them yet
        self._tasks: dict[str, asyncio.Task[None]] = {}  # tasks accepted by try_submit
        self.crashes = CrashTracker(restart or RestartPolicy(), spec.queue)
        self._running: dict[str, Child] = {}
        self._probe: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        if start not in ("fork", "exec"):
            raise ValueError(f"queue {spec.queue!r}: one_shot_start must be fork or exec, got {start!r}")
        # "fork": a process per task forked by a warm zygote (zygote.py); "exec": executed
        self._zygote = Zygote(spec, load) if start == "fork" else None
        self._zygote_start: asyncio.Future[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._started and not self._stopping and self.crashes.healthy

    async def start(self) -> None:
        self._started = True
        if self._zygote is not None:  # warm it now; a failure shows at the first task
            self._start_zygote().add_done_callback(lambda done: done.exception())

    async def stop(self, grace: float | None = None) -> None:
        self._stopping = True
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await asyncio.gather(
            *(c.stop(grace, reason="the agent is shutting down") for c in self._running.values())
        )
        if self._zygote_start is not None:
            self._zygote_start.cancel()
        if self._zygote is not None:
            await self._zygote.stop(grace)

    def try_submit(self, request: TaskRequest, on_outcome: Callable[[Outcome], None]) -> bool:
        """Accept the task now (it counts against ``capacity`` at once) and run it in its own
        process in the background; ``on_outcome`` gets its outcome."""
        if not self.healthy:
            return False
        self._starting += 1  # reserved here, synchronously: the next fetch sees it

        async def run_reserved() -> None:
            try:
                outcome = await self.run(request, reserved=True)
            except PoolUnavailable as exc:
                outcome = Outcome("requeue", error=str(exc))
            finally:
                self._tasks.pop(request.task_id, None)
            on_outcome(outcome)

        self._tasks[request.task_id] = asyncio.get_running_loop().create_task(run_reserved())
        return True

    def withdraw(self, task_id: str) -> bool:
        """Forget a task accepted by ``try_submit``: its process is stopped."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return False
        task.cancel()
        return True

    async def run(self, request: TaskRequest, *, reserved: bool = False) -> Outcome:
        if not reserved:
            self._starting += 1
        try:
            if not self._started or self._stopping:
                state = "stopping" if self._stopping else "not started"
                raise PoolUnavailable(f"queue {self.spec.queue!r}: the child pool is {state}")
            if not self.crashes.healthy:
                raise PoolUnavailable(self.crashes.describe())
        except PoolUnavailable:
            self._starting -= 1
            raise
        child: Child | None = None
        try:
            try:
                child = await self._new_child()
                self._running[request.task_id] = child
                await child.start()
            except ChildStartupError as exc:
                self._start_failed(str(exc))
                return Outcome("requeue", error=f"child process failed to start: {exc}")
            finally:
                self._starting -= 1
            outcome = await child.run(request)
            with contextlib.suppress(TimeoutError):  # it exits by itself after answering
                await asyncio.wait_for(child.wait_exited(), self.spec.stop_grace)
            return outcome
        finally:
            self._running.pop(request.task_id, None)
            if child is not None and child.exit is None:
                await asyncio.shield(child.stop(reason="its task is over"))

    async def _new_child(self) -> Child:
        """A child forked by the zygote (started first if it is not running), or an
        executed one when the deployment asks for exec or cannot fork."""
        zygote = self._zygote
        if zygote is not None and zygote.unsafe is None:
            if not zygote.alive:
                await asyncio.shield(self._start_zygote())
            if zygote.unsafe is None:
                return ForkedChild(self.spec, zygote, capacity=self.capacity)
        return Child(self.spec, one_shot=True, capacity=self.capacity)

    def _start_zygote(self) -> asyncio.Future[None]:
        """Start the zygote once for every task waiting for it."""
        if self._zygote_start is None:
            assert self._zygote is not None
            zygote = self._zygote

            async def start() -> None:
                try:
                    await zygote.start()
                finally:
                    self._zygote_start = None
                if zygote.unsafe is not None:
                    log.warning("queue %s: one_shot tasks start by exec, not fork: %s",
                                self.spec.queue, zygote.unsafe)

            self._zygote_start = asyncio.ensure_future(start())
        return self._zygote_start

    def _start_failed(self, error: str) -> None:
        log.warning("queue %s: one_shot child failed to start: %s", self.spec.queue, error)
        self.crashes.record(error)
        if not self.crashes.healthy and self._probe is None and not self._stopping:
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_healthy())

    async def _probe_until_healthy(self) -> None:
        try:
            while not self.crashes.healthy and not self._stopping:
                await asyncio.sleep(self.crashes.next_delay())
                probe = Child(self.spec, one_shot=True)
                try:
                    await probe.start()
                except ChildStartupError as exc:
                    self.crashes.record(f"probe start failed: {exc}")
                    continue
                finally:
                    if probe.exit is None:  # started (or cancelled while starting): stop it
                        await asyncio.shield(probe.stop(reason="health probe done"))
                self.crashes.recovered()
        finally:
            self._probe = None

    def placeable(self, room: int | float) -> int:
        """A process per task: as many as may start (less those still starting)."""
        return max(0, int(min(room, 1 << 30)) - self._starting) if self.healthy else 0

    def running(self) -> int:
        return len(self._running)

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Let the running tasks finish (up to ``timeout``; ``hurry`` cuts it short), then
        kill what is left; returns once every child has exited."""
        self._stopping = True
        children = list(self._running.values())
        await wait_then_kill(children, timeout, hurry)
        await self.stop(0.5)

    async def cancel(self, task_id: str) -> None:
        child = self._running.get(task_id)
        if child is not None:
            await child.cancel(task_id)

    def status(self) -> list[dict[str, Any]]:
        return [c.status() for c in self._running.values()]

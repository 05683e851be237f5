"""``LongRunningPool``: the warm children of one deployment, restarted when they crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from agent.supervisor.batches import BatchCollector
from agent.supervisor.child import Child, ChildExit, ChildStartupError
from agent.supervisor.health import Capacity, CrashSuspects, CrashTracker, RestartPolicy
from agent.supervisor.launch import ChildSpec
from agent.supervisor.outcome import Outcome
from agent.supervisor.pool import ChildPool, PoolUnavailable, wait_then_kill
from agent.supervisor.task_request import TaskRequest

log = logging.getLogger("agent.supervisor")

MAX_CHILDREN = 256  # children of one pool at most, whatever processes: auto computes
MEMORY_WATCH = 0.25  # seconds between RSS checks while max_memory_bytes is set


class LongRunningPool(ChildPool):
    """Keeps ``processes`` children ready and sends each task to a child with a free slot
    (or, when every slot is busy, to wait in a child, up to ``spec.prefetch`` per child).

    ``processes=None`` (auto) starts one child, learns its slots from its ready message,
    then starts as many as ``target_slots`` (``worker.concurrency``) need. Each child has a
    keeper that replaces it when it is retired: at once after a deliberate stop (deadline
    overrun, memory, recycling), after a backoff after a crash. ``max_crashes`` crashes
    within ``crash_window`` make the pool unhealthy until a restart succeeds.
    """

    def __init__(
        self, spec: ChildSpec, processes: int | None = 1, restart: RestartPolicy | None = None,
        *, capacity: Capacity | None = None, target_slots: int = 1,
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError(f"queue {spec.queue!r}: processes must be >= 1, got {processes}")
        self.spec = spec
        self.processes = processes
        self.target_slots = target_slots
        self.capacity = capacity or Capacity()
        self.suspects = CrashSuspects()
        self.crashes = CrashTracker(restart or RestartPolicy(), spec.queue)
        self._next = 0  # where the search for a child with room starts (round robin)
        self._children: set[Child] = set()  # every child not yet exited
        self._serving: list[Child] = []  # ready children that take tasks
        self._waiters: list[asyncio.Future[None]] = []
        self._keepers: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()
        # batched handlers (batches.py)
        self.batches = BatchCollector(self._free_child, lambda: self.running() > 0)

    @property
    def healthy(self) -> bool:
        return self._started and not self._stopping and self.crashes.healthy

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the children and wait until all are ready.

        Raises ``ChildStartupError`` (the first child's error) if any fails; the others are
        stopped, and ``start()`` may be called again. Cancelling it kills them.
        """
        if self._started:
            return
        children: list[Child] = []
        count = self.processes
        try:
            if count is None:  # auto: the first child says how many slots a child has
                children.append(await self._spawn())
                count = self.children_needed(children[0].slots)
            results = await asyncio.gather(
                *(self._spawn() for _ in range(count - len(children))), return_exceptions=True
            )
        except BaseException:
            await asyncio.shield(asyncio.gather(
                *(c.stop(0.5, reason="pool start cancelled") for c in self._children)))
            raise
        children += [r for r in results if isinstance(r, Child)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(c.stop(reason="pool start failed") for c in children))
            raise failure
        self._started = True
        ready = children[0].ready
        if ready is not None and ready.batches:
            self.batches.configure(ready.batches, ready.task_types)
        if self.spec.max_memory_bytes:
            self._in_background(self._watch_memory())
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
        self.batches.release_all("the agent is shutting down before the task's batch started")
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

    def children_needed(self, slots: int) -> int:
        """processes: auto: children enough for ``target_slots`` handlers at once."""
        return max(1, min(MAX_CHILDREN, math.ceil(self.target_slots / max(slots, 1))))

    @property
    def slots(self) -> int:
        """Handler slots of the children serving now."""
        return sum(c.slots for c in self._serving)

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Shutdown without running anything twice: the children finish the handlers running
        now (up to ``timeout``; ``hurry`` cuts it short), start none of the tasks waiting in
        them, and exit; then what is left is killed. Returns once every child has exited,
        so every task held here has had its outcome (``requeue`` for the unfinished)."""
        self.batches.release_all("the agent is shutting down before the task's batch started")
        self._stopping = True
        self._stopped.set()
        self._wake_waiters()
        children = list(self._children)
        for child in children:
            child.finish_and_exit("the agent is shutting down")
        await wait_then_kill(children, timeout, hurry)
        await self.stop(0.5)

    def _child_spec(self) -> ChildSpec:
        """The spec of the next child (GpuPool gives each its device)."""
        return self.spec

    async def _spawn(self) -> Child:
        child = Child(self._child_spec(), on_exit=self._child_exited, on_free=self._child_free,
                      capacity=self.capacity, suspects=self.suspects)
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
        if self.batches.specs:
            self.batches.dispatch()

    def _child_free(self) -> None:
        """A child finished a task: a ``run()`` waiting for room may go on, and the crash
        accounting knows the pool serves."""
        self.crashes.served()
        if self._waiters:
            self._wake_waiters()
        if self.batches.specs:
            self.batches.dispatch()

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
        if self.batches.specs and self.batches.spec_for(request.type) is not None:
            return await self._run_batched(request)
        child = await self._pick(request)
        try:
            return await child.run(request)
        finally:
            self._wake_waiters()

    def try_submit(self, request: TaskRequest, on_outcome: Callable[[Outcome], None]) -> bool:
        """Send the task to a child where it starts now (a free slot, while ``capacity``
        has room), else to wait in a child whose slots are all busy (prefetch). The hot
        path: no task or future. False when no child can take it, or the pool takes
        nothing now (``run()`` then waits or raises)."""
        if not self.healthy:
            return False
        if self.batches.specs and self.batches.spec_for(request.type) is not None:
            self.batches.add(request, on_outcome)
            return True
        child = self._with_room()
        return child is not None and child.submit(request, on_outcome)

    def placeable(self, room: int | float) -> int:
        """Tasks this pool can take now with ``room`` more handlers allowed to start: the
        free slots (up to ``room``) plus the prefetch room of children that will have no
        free slot left. The processor fetches no more than this."""
        if not self.healthy:
            return 0
        serving = self._serving
        free = sum(c.free_slots for c in serving)
        starts = int(min(room, free))
        if self.batches.specs:  # a free slot takes a whole batch
            return self.batches.room(starts)
        prefetch = 0
        for child in serving:
            ledger = child.ledger
            if ledger.prefetch and (starts >= free or child.free_slots == 0):
                prefetch += ledger.prefetch - len(ledger.waiting)
        return starts + prefetch

    def handlers_for(self, tasks: int) -> int:
        """Handler slots ``tasks`` placed here take: one per batch for batched code."""
        if not self.batches.specs:
            return tasks
        largest = max(size for size, _ in self.batches.specs.values())
        return -(-tasks // largest)

    def running(self) -> int:
        """Handlers running now in this pool."""
        return sum(c.busy for c in self._children)

    def handler_started(self, task_id: str) -> bool:
        return any(c.handler_started(task_id) for c in self._children)

    def _free_child(self) -> Child | None:
        """A child where a batch starts now (a free slot, under ``worker.concurrency``)."""
        if not self.healthy or self.capacity.room <= 0:
            return None
        return next((c for c in self._serving if c.free_slots > 0), None)

    async def _run_batched(self, request: TaskRequest) -> Outcome:
        """``run()`` for a batched type: the task waits for its batch (batches.py)."""
        await self._pick_healthy()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.batches.add(request, lambda outcome: future.done() or future.set_result(outcome))
        try:
            return await future
        except asyncio.CancelledError:
            self.withdraw(request.task_id)
            raise

    async def _pick_healthy(self) -> None:
        if not self._started or self._stopping:
            state = "stopping" if self._stopping else "not started"
            raise PoolUnavailable(f"queue {self.spec.queue!r}: the child pool is {state}")
        if not self.crashes.healthy:
            raise PoolUnavailable(self.crashes.describe())

    def _with_room(self) -> Child | None:
        """A child with a free slot if a handler may start (round robin), else the child
        with the most prefetch room."""
        serving = self._serving
        n = len(serving)
        if self.capacity.room > 0:
            for i in range(n):
                child = serving[(self._next + i) % n]
                if child.free_slots > 0:
                    self._next = (self._next + i + 1) % n
                    return child
        best: Child | None = None
        for child in serving:
            if child.prefetch_room > 0 and (best is None or child.prefetch_room > best.prefetch_room):
                best = child
        return best

    async def _watch_memory(self) -> None:
        """``max_memory_bytes`` while tasks run: a child over it is killed within
        MEMORY_WATCH seconds (its running handler fails); an idle one is recycled."""
        limit = self.spec.max_memory_bytes
        assert limit
        while not self._stopping:
            await asyncio.sleep(MEMORY_WATCH)
            for child in list(self._serving):
                rss = child.rss()
                if rss is None or rss <= limit:
                    continue
                if child.busy:
                    child.kill_for_memory(rss, limit)
                else:
                    child.drain(f"recycled: RSS {rss} bytes is over max_memory_per_child {limit}")

    def withdraw(self, task_id: str) -> bool:
        """Stop waiting for a task sent by ``try_submit`` (the child is asked to cancel it)."""
        if self.batches.withdraw(task_id):
            return True
        for child in self._children:
            if child.withdraw(task_id):
                self._wake_waiters()
                return True
        return False

    async def _pick(self, request: TaskRequest) -> Child:
        """A child that can take the task (``_with_room``); waits while none can."""
        while True:
            if not self._started or self._stopping:
                state = "stopping" if self._stopping else "not started"
                raise PoolUnavailable(f"queue {self.spec.queue!r}: the child pool is {state}")
            if not self.crashes.healthy:
                raise PoolUnavailable(self.crashes.describe())
            best = self._with_room()
            if best is not None:
                return best
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
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
        if self.batches.cancel(task_id):  # still waiting for its batch: never sent
            return
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

"""``SlotLedger``: what one child holds, and which of it runs now.

Pure bookkeeping (no I/O): the ``Child`` sends requests and reads answers; the ledger says
which task starts in a free slot, which waits in the child for one (prefetch), when each
handler's time is up, and keeps the agent-wide count of handlers running (``Capacity``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agent.supervisor.health import Capacity
from agent.supervisor.outcome import Outcome
from agent.supervisor.task_request import TaskRequest

OnOutcome = Callable[[Outcome], None]


class SlotLedger:
    """The tasks one child holds.

    ``outcomes``: every task held, with what to call with its outcome (popped exactly once).
    ``running``: the tasks whose handler runs now, with the time its deadline falls and the
    time it started; a task whose caller gave up (withdrawn) stays there, its slot busy,
    until the child answers it.
    ``waiting``: tasks sent ahead of a free slot, in the order the child starts them (it
    starts the next one as soon as a handler finishes, which is when its clock starts here).
    """

    __slots__ = ("batch_of", "batches", "capacity", "extra", "outcomes", "prefetch", "running",
                 "slots", "waiting")

    def __init__(self, capacity: Capacity, slots: int = 1, prefetch: int = 0) -> None:
        self.capacity = capacity
        self.slots = slots
        self.prefetch = prefetch
        self.outcomes: dict[str, OnOutcome] = {}
        self.running: dict[str, tuple[float, TaskRequest, float]] = {}
        self.waiting: deque[TaskRequest] = deque()
        # batched handlers (supervisor/batches.py): one slot runs all the tasks of a batch
        self.batches: dict[str, set[str]] = {}  # batch id -> its tasks still running
        self.batch_of: dict[str, str] = {}  # task id -> its batch id
        self.extra = 0  # entries of `running` beyond one per batch (they take no slot)

    @property
    def busy(self) -> int:
        """Slots whose handler runs now (a batch takes one, whatever its size)."""
        return len(self.running) - self.extra

    def holds(self, task_id: str) -> bool:
        return task_id in self.outcomes or task_id in self.running

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.running) + self.extra

    @property
    def prefetch_room(self) -> int:
        """Tasks that may still be sent to wait (only once every slot is busy)."""
        return self.prefetch - len(self.waiting) if len(self.running) - self.extra >= self.slots else 0

    def hold(self, request: TaskRequest, on_outcome: OnOutcome, now: float) -> bool:
        """Take a task sent to the child: True when its handler starts now (a free slot),
        False when it waits for one."""
        self.outcomes[request.task_id] = on_outcome
        if len(self.running) - self.extra < self.slots:
            self.running[request.task_id] = (request.handler_deadline(now), request, now)
            self.capacity.running += 1
            return True
        self.waiting.append(request)
        return False

    def hold_batch(self, batch_id: str, requests: list[TaskRequest],
                   callbacks: list[OnOutcome], now: float) -> None:
        """Take a batch sent to a free slot: every task runs now, its clock starts now, and
        the batch holds one slot until its last task is answered."""
        members = self.batches[batch_id] = set()
        for request, on_outcome in zip(requests, callbacks, strict=True):
            self.outcomes[request.task_id] = on_outcome
            self.running[request.task_id] = (request.handler_deadline(now), request, now)
            self.batch_of[request.task_id] = batch_id
            members.add(request.task_id)
        self.extra += len(members) - 1
        self.capacity.running += 1

    def batch_mates(self, task_id: str) -> list[str]:
        """The other running tasks of ``task_id``'s batch (none for a task run alone)."""
        batch_id = self.batch_of.get(task_id)
        return [] if batch_id is None else [t for t in self.batches[batch_id] if t != task_id]

    def answered(self, task_id: str, now: float) -> None:
        """The child answered ``task_id``: its slot goes to the task waiting longest (whose
        clock starts now), or is free."""
        if self.batch_of and task_id in self.batch_of:
            batch_id = self.batch_of.pop(task_id)
            members = self.batches[batch_id]
            members.discard(task_id)
            if members:  # the batch still runs in its slot
                self.running.pop(task_id, None)
                self.extra -= 1
                return
            del self.batches[batch_id]
        if self.running.pop(task_id, None) is not None:
            if self.waiting:
                request = self.waiting.popleft()
                self.running[request.task_id] = (request.handler_deadline(now), request, now)
            else:
                self.capacity.running -= 1
            return
        for request in self.waiting:  # answered before it started (a cancelled waiting task)
            if request.task_id == task_id:
                self.waiting.remove(request)
                return

    def take(self, task_id: str) -> OnOutcome | None:
        """The task's outcome callback, once (None if it is not held, or was taken)."""
        return self.outcomes.pop(task_id, None)

    def handler_running(self, task_id: str) -> bool:
        return task_id in self.running and task_id in self.outcomes

    def running_held(self) -> list[str]:
        """The tasks whose handler runs now, withdrawn ones left out."""
        return [task_id for task_id in self.running if task_id in self.outcomes]

    def first_late(self, limit: float) -> TaskRequest | None:
        """A running task whose deadline is at or before ``limit``."""
        return next((req for deadline, req, _ in self.running.values() if deadline <= limit), None)

    def handler_seconds(self, task_id: str) -> float:
        """How long the running task's handler was given (its deadline less its start)."""
        deadline, _, started = self.running[task_id]
        return deadline - started

    def release_all(self) -> dict[str, OnOutcome]:
        """The child is gone: forget everything; returns the outcome callbacks still due."""
        outcomes, self.outcomes = self.outcomes, {}
        self.capacity.running -= self.busy
        self.running.clear()
        self.batches.clear()
        self.batch_of.clear()
        self.extra = 0
        self.waiting.clear()
        return outcomes

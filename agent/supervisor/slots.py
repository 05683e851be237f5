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

    __slots__ = ("capacity", "outcomes", "prefetch", "running", "slots", "waiting")

    def __init__(self, capacity: Capacity, slots: int = 1, prefetch: int = 0) -> None:
        self.capacity = capacity
        self.slots = slots
        self.prefetch = prefetch
        self.outcomes: dict[str, OnOutcome] = {}
        self.running: dict[str, tuple[float, TaskRequest, float]] = {}
        self.waiting: deque[TaskRequest] = deque()

    def holds(self, task_id: str) -> bool:
        return task_id in self.outcomes or task_id in self.running

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.running)

    @property
    def prefetch_room(self) -> int:
        """Tasks that may still be sent to wait (only once every slot is busy)."""
        return self.prefetch - len(self.waiting) if len(self.running) >= self.slots else 0

    def hold(self, request: TaskRequest, on_outcome: OnOutcome, now: float) -> bool:
        """Take a task sent to the child: True when its handler starts now (a free slot),
        False when it waits for one."""
        self.outcomes[request.task_id] = on_outcome
        if len(self.running) < self.slots:
            self.running[request.task_id] = (request.handler_deadline(now), request, now)
            self.capacity.running += 1
            return True
        self.waiting.append(request)
        return False

    def answered(self, task_id: str, now: float) -> None:
        """The child answered ``task_id``: its slot goes to the task waiting longest (whose
        clock starts now), or is free."""
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
        self.capacity.running -= len(self.running)
        self.running.clear()
        self.waiting.clear()
        return outcomes

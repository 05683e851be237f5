"""Batched handlers, the agent's side: collect a batched type's tasks and run them together.

A child announces its batched types in its ready message (``"batch": {"embed": {"size":
32, "max_wait": 0.01}}``). The pool hands each task of such a type to a ``BatchCollector``,
which gathers up to ``size`` tasks and sends them to one free slot in one request line
once the batch is full or ``max_wait`` seconds after its first task arrived (later, with
more tasks in it, when no slot is free then). One batch holds one slot, so
``worker.concurrency`` still counts handlers running. Every task keeps its own lease (the
processor's), its own timeout (from the batch's start), outcome and result.

A child that dies while it runs a batch does not charge the whole batch: the batch's tasks
are split in halves that run as batches of their own, and again on each crash, until the
task that kills the child runs alone and is charged (``retry``). Each split halves the
suspects, so a batch of n tasks costs at most about log2(n) + 1 crashes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.supervisor.outcome import Outcome
from agent.supervisor.task_request import TaskRequest

if TYPE_CHECKING:
    from agent.supervisor.child import Child

log = logging.getLogger("agent.supervisor")

OnOutcome = Callable[[Outcome], None]
# asyncio's timers wake the loop late by up to 2 ms: epoll takes whole milliseconds, and
# Python 3.11 rounds the timeout up twice (timers of 8.5 to 10 ms all fire after 10.1 ms). A
# forming batch's timer is set this much early (at most a fifth of its max_wait), so the batch
# leaves by max_wait after its first task came, not up to 2 ms later (bench/README.md).
TIMER_SLACK = 0.002


def _due_after(max_wait: float) -> float:
    """How long a forming batch waits before its timer may send it."""
    return max_wait - min(TIMER_SLACK, max_wait / 5)

CANCELED = "context canceled"  # asynq's error for a cancelled task (spec/asynq-wire.md §3.12)
_ids = itertools.count(1)


class BatchCrash(Outcome):
    """The outcome the child gives each task of a batch it died running: the collector
    decides (bisect, or charge the one task left)."""

    __slots__ = ()


def encode_batch(batch_id: str, requests: list[TaskRequest]) -> bytes:
    """``{"batch": id, "tasks": [request, ...]}``: one line, one slot (docs/protocol.md)."""
    from agent.supervisor.protocol import encode_request

    items = b",".join(encode_request(r)[:-1] for r in requests)
    return b'{"batch":"' + batch_id.encode() + b'","tasks":[' + items + b"]}\n"


class Batch:
    """Tasks of one type that run together. ``split``: made by a bisection after a crash;
    it runs as it is (no task joins it)."""

    __slots__ = ("callbacks", "crashed", "due", "id", "opened", "requests", "split", "type")

    def __init__(self, task_type: str, *, split: bool = False) -> None:
        self.id = f"b{next(_ids)}"
        self.type = task_type
        self.requests: list[TaskRequest] = []
        self.callbacks: list[OnOutcome] = []
        self.opened = time.monotonic()
        self.split = split
        self.due = split  # full (or split): waits in the due queue, takes no more tasks
        self.crashed: list[tuple[TaskRequest, OnOutcome, Outcome]] = []

    def add(self, request: TaskRequest, on_outcome: OnOutcome) -> None:
        self.requests.append(request)
        self.callbacks.append(on_outcome)

    def remove(self, task_id: str) -> OnOutcome | None:
        """Take a task out; its outcome callback (None when it is not here)."""
        for i, request in enumerate(self.requests):
            if request.task_id == task_id:
                on_outcome = self.callbacks[i]
                del self.requests[i], self.callbacks[i]
                return on_outcome
        return None


class BatchCollector:
    """The batches of one pool: forming (one per type, still taking tasks), due (full, or
    split after a crash) and the timer that sends a forming batch when its wait is over.

    ``free_child`` returns a child with a free slot (under ``worker.concurrency``) or None;
    ``dispatch()`` is called again whenever one of the pool's slots frees. ``running_here``
    says whether the pool runs anything: when it does not, what keeps a batch waiting is
    another pool's handlers (``worker.concurrency`` is shared), whose end the pool does not
    hear of, so the collector looks again every ``RECHECK`` seconds."""

    RECHECK = 0.005

    def __init__(self, free_child: Callable[[], Child | None],
                 running_here: Callable[[], bool] = lambda: True) -> None:
        self.specs: dict[str, tuple[int, float]] = {}
        self.known_types: frozenset[str] = frozenset()
        self._free_child = free_child
        self._running_here = running_here
        self._forming: dict[str, Batch] = {}
        self._due: deque[Batch] = deque()
        self._where: dict[str, Batch] = {}  # task id -> the batch it waits in (not yet sent)
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False  # the pool stopped: nothing more is sent
        self.cancelled = 0  # tasks cancelled while they waited for their batch
        self.sent: Counter[str] = Counter()  # batches sent, by type
        self.tasks_sent: Counter[str] = Counter()  # tasks in them, by type
        self.bisections: Counter[str] = Counter()  # batches split after a crash, by type

    def configure(self, specs: dict[str, tuple[int, float]] | None,
                  task_types: tuple[str, ...] | None) -> None:
        """The batched types a ready child announced (every child of a pool runs the same code)."""
        self.specs = dict(specs or {})
        self.known_types = frozenset(task_types or ())

    def spec_for(self, task_type: str) -> tuple[int, float] | None:
        """``(size, max_wait)`` when tasks of this type run in batches."""
        spec = self.specs.get(task_type)
        if spec is None and "*" in self.specs and task_type not in self.known_types:
            return self.specs["*"]  # the default handler is batched
        return spec

    @property
    def held(self) -> int:
        """Tasks waiting here for their batch to be sent."""
        return len(self._where)

    def room(self, free_slots: int) -> int:
        """Tasks that could start now in ``free_slots`` slots, as batches."""
        largest = max((size for size, _ in self.specs.values()), default=1)
        return max(free_slots * largest - self.held, 0)

    def add(self, request: TaskRequest, on_outcome: OnOutcome) -> None:
        spec = self.spec_for(request.type)
        assert spec is not None
        batch = self._forming.get(request.type)
        if batch is None:
            batch = self._forming[request.type] = Batch(request.type)
        batch.add(request, on_outcome)
        self._where[request.task_id] = batch
        if len(batch.requests) >= spec[0]:
            del self._forming[request.type]
            batch.due = True
            self._due.append(batch)
        self.dispatch()

    def withdraw(self, task_id: str) -> bool:
        """Forget a task not sent yet (its outcome callback is never called)."""
        return self._take(task_id) is not None

    def cancel(self, task_id: str) -> bool:
        """asynq's cancel of a task still waiting for its batch: it leaves the batch and fails
        with "context canceled" (retried or archived by its own count, as asynq does); the
        rest of the batch is sent as it would have been. False when it is not waiting here."""
        on_outcome = self._take(task_id)
        if on_outcome is None:
            return False
        self.cancelled += 1
        on_outcome(Outcome("retry", error=CANCELED))
        return True

    def _take(self, task_id: str) -> OnOutcome | None:
        batch = self._where.pop(task_id, None)
        if batch is None:
            return None
        on_outcome = batch.remove(task_id)
        if not batch.requests:
            if self._forming.get(batch.type) is batch:
                del self._forming[batch.type]
            elif batch in self._due:
                self._due.remove(batch)
        return on_outcome

    def release_all(self, error: str) -> None:
        """The pool stops: every task not sent goes back to its queue, uncharged."""
        self.closed = True
        batches = [*self._due, *self._forming.values()]
        self._due.clear()
        self._forming.clear()
        self._where.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for batch in batches:
            for on_outcome in batch.callbacks:
                on_outcome(Outcome("requeue", error=error))

    def dispatch(self) -> None:
        """Send every batch that may go now to a free slot; arm the timer for the next."""
        if self.closed:
            return
        now = time.monotonic()
        while (batch := self._next_batch(now)) is not None:
            child = self._free_child()
            if child is None:  # every slot busy: dispatch() runs again when one frees
                if batch.due:
                    self._due.appendleft(batch)  # keeps its place
                else:
                    self._forming[batch.type] = batch  # it goes on filling meanwhile
                self._cancel_timer()
                if not self._running_here():
                    self._timer = asyncio.get_running_loop().call_later(self.RECHECK, self._on_timer)
                return
            self._send(child, batch)
        self._arm(now)

    def _next_batch(self, now: float) -> Batch | None:
        if self._due:
            return self._due.popleft()
        for task_type, batch in self._forming.items():
            spec = self.spec_for(task_type)
            if spec is None or now - batch.opened >= _due_after(spec[1]):
                return self._forming.pop(task_type)
        return None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, now: float) -> None:
        self._cancel_timer()
        waits = [(_due_after(spec[1]) - (now - b.opened)) for t, b in self._forming.items()
                 if (spec := self.spec_for(t)) is not None]
        if waits:
            delay = max(min(waits), 0.0)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.dispatch()

    def status(self) -> dict[str, dict]:
        """By type: its ``batch`` and ``max_wait``, the batches being collected (tasks, age,
        and whether it is due: full or split, waiting for a slot) and what was sent."""
        now = time.monotonic()
        out: dict[str, dict] = {}
        for task_type in sorted({*self.specs, *self.sent, *(b.type for b in self._batches())}):
            spec = self.spec_for(task_type)
            out[task_type] = {"batch": spec[0] if spec else None, "max_wait": spec[1] if spec else None,
                              "collecting": [], "waiting_tasks": 0, "oldest_age_seconds": 0.0,
                              "batches_sent": self.sent[task_type],
                              "tasks_sent": self.tasks_sent[task_type],
                              "bisections": self.bisections[task_type]}
        for batch in self._batches():
            entry, age = out[batch.type], round(now - batch.opened, 4)
            entry["collecting"].append({"tasks": len(batch.requests), "age_seconds": age,
                                        "due": batch.due})
            entry["waiting_tasks"] += len(batch.requests)
            entry["oldest_age_seconds"] = max(entry["oldest_age_seconds"], age)
        return out

    def _batches(self) -> list[Batch]:
        return [*self._due, *self._forming.values()]

    def _send(self, child: Child, batch: Batch) -> None:
        self.sent[batch.type] += 1
        self.tasks_sent[batch.type] += len(batch.requests)
        for request in batch.requests:
            self._where.pop(request.task_id, None)
        callbacks = [self._callback(batch, request, on_outcome)
                     for request, on_outcome in zip(batch.requests, batch.callbacks, strict=True)]
        if not child.submit_batch(batch.id, batch.requests, callbacks):  # checked free: not expected
            for on_outcome in batch.callbacks:
                on_outcome(Outcome("requeue", error=f"child process {child.pid} took no batch"))

    def _callback(self, batch: Batch, request: TaskRequest, on_outcome: OnOutcome) -> OnOutcome:
        def answered(outcome: Outcome) -> None:
            if type(outcome) is not BatchCrash:
                on_outcome(outcome)
                return
            if not batch.crashed:  # the other tasks of the batch report in the same turn
                asyncio.get_running_loop().call_soon(self._bisect, batch)
            batch.crashed.append((request, on_outcome, outcome))
        return answered

    def _bisect(self, batch: Batch) -> None:
        """The child died running ``batch``: one task left is the culprit (charged); more
        are split in halves, queued behind what is due (so other work is served between
        the crashes, and the crash accounting does not take it for a crash loop)."""
        crashed, batch.crashed = batch.crashed, []
        if self.closed:
            for _, on_outcome, outcome in crashed:
                on_outcome(Outcome("requeue", error=outcome.error))
            return
        if len(crashed) == 1:
            _, on_outcome, outcome = crashed[0]
            on_outcome(Outcome("retry", error=outcome.error))
            return
        log.warning("batch of %d tasks of type %r crashed its child; running them again in two "
                    "halves to find the task that crashes it", len(crashed), batch.type)
        self.bisections[batch.type] += 1
        middle = len(crashed) // 2
        for part in (crashed[:middle], crashed[middle:]):
            half = Batch(batch.type, split=True)
            for request, on_outcome, _ in part:
                half.add(request, on_outcome)
                self._where[request.task_id] = half
            self._due.append(half)
        self.dispatch()

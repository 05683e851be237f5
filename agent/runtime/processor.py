"""Processor: the hot path. Dequeues by priority only what its executors can start now
(plus their explicit prefetch), runs each task on its queue's executor, and records the
outcome exactly as asynq would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent import tracing
from agent.broker import Broker, DequeuedTask, LeaseLostError, TaskNotFoundError
from agent.broker.flow import FlowControl
from agent.broker.plans import processing_deadline
from agent.broker.priority import QueueOrder
from agent.runtime.leases import LeaseKeeper
from agent.runtime.wakeup import QueueWaiters, WorkSignal
from agent.supervisor.health import Capacity
from agent.supervisor.outcome import DEADLINE_EXCEEDED, Executor, Outcome
from agent.supervisor.pool import wait_unless_hurried

log = logging.getLogger("agent.runtime")

CANCELED_ERROR = "context canceled"
DRAINED_MEMORY = 0.2  # seconds a queue found empty is left out of weighted draws under load
SPREAD_MAX_QUEUES = 4  # up to this many queues, a fetch spreads its slots over them by weight
GATHER_SLOTS = 0.002  # seconds to wait for more free slots before a small fetch under load
DEADLINE_ERROR = f"{DEADLINE_EXCEEDED}: the task's deadline had passed when it was dequeued; not run"


class Observer:
    """Hooks for metrics; the default does nothing."""

    def tasks_started(self, queue: str, count: int) -> None: ...

    def task_finished(self, task: DequeuedTask, outcome: Outcome, state: str, seconds: float) -> None: ...

    def tasks_deleted(self, queue: str, tasks: list[DequeuedTask], seconds: list[float]) -> None:
        """Successes without retention of one queue, as a batch (state "deleted")."""

    def task_dropped(self, task: DequeuedTask) -> None: ...

    def lease_lost(self, task: DequeuedTask) -> None: ...

    def redis_error(self, where: str, exc: BaseException) -> None: ...

    def dequeued(self, queue: str, count: int) -> None: ...


@dataclass(slots=True)
class InFlight:
    """A task we hold. It runs either through ``Executor.start_task`` (``executor`` set: the
    hot path, no asyncio task of its own) or in a ``handler`` task awaiting ``execute``."""

    task: DequeuedTask
    started: float = 0.0  # monotonic
    handler: asyncio.Task | None = None
    executor: Executor | None = None
    interrupted: str = ""  # "", "cancelled", "abandoned" (lease lost) or "requeued"
    recording: bool = False  # the outcome is being written: too late to interrupt


class Processor:
    def __init__(self, broker: Broker, weights: Mapping[str, int], *, concurrency: int,
                 limits: Mapping[str, int] | None = None, strict: bool = False,
                 executor_for: Callable[[str], Executor], leases: LeaseKeeper,
                 signal: WorkSignal, waiters: QueueWaiters | None = None,
                 observer: Observer | None = None, batch: int = 64,
                 capacity: Capacity | None = None, flow: FlowControl | None = None) -> None:
        self.broker = broker
        # queues with flow limits: their dequeue checks them (the broker's), and a queue a
        # limit holds is not asked again before it may give (rate) or for FLOW_POLL (slots)
        self.flow = flow if flow else None
        broker.flow = self.flow
        # handlers running across the executors (shared with the child pools)
        self.capacity = capacity or Capacity(concurrency)
        self.order = QueueOrder(weights, strict)
        self.queues = list(self.order.weights) or list(weights)
        self.concurrency = concurrency
        self.limits = dict(limits or {})
        self.executor_for = executor_for
        self.leases = leases
        self.signal = signal
        self.waiters = waiters
        self.observer = observer or Observer()
        self.tracer = None  # an AttemptTracer while tracing is on (agent.tracing)
        if tracing.setup():
            from agent.tracing.attempts import attempt_tracer

            self.tracer = attempt_tracer()
            self.observer = self.tracer.observing(self.observer)
        self.batch = batch
        self.in_flight: dict[str, InFlight] = {}
        self.per_queue: dict[str, int] = dict.fromkeys(self.queues, 0)
        self.paused: set[str] = set()
        self.fetching = True
        self.last_dequeue_ok = 0.0  # monotonic time of the last successful dequeue call
        self._slot_freed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._lane_open = broker.batching  # successes without retention go as done_many
        self._deletions: dict[str, list[tuple[InFlight, Outcome]]] = {}
        self._deletions_due = False
        self._no_fetch = asyncio.Event()  # set while no dequeue call is in flight
        self._no_fetch.set()
        self._all_done = asyncio.Event()  # set whenever nothing is in flight
        self._all_done.set()
        self._handlers: set[asyncio.Task] = set()
        self._paused_checked = 0.0
        self._empty_at: dict[str, float] = {}  # queue -> when a dequeue last found it empty
        self._executors: dict[str, Executor] = {}
        self._distinct: dict[int, Executor] = {}  # each executor once (queues share them)
        self._budget: dict[int, int] = {}  # id(executor) -> tasks it can take now
        self.requeued = 0  # tasks given back to their queue (requeue outcomes written)
        self._recording = 0  # tasks whose handler is done and whose outcome is being written
        self._most_room = 1  # the most tasks the executors could take at once (seen so far)
        self.loop_error: str = ""  # the last error of the fetch loop, while it persists
        self._took_last = False
        self._waited_for_slots = False
        self._rng = random.Random()
        for queue in self.queues:  # every executor in the room count and the drain from the start
            self._executor(queue)

    # -- fetch loop ---------------------------------------------------------------------

    def eligible(self) -> list[str]:
        """Queues we may take from now: not paused, under their limit, executor healthy; by
        weight with strict priority, else in configured order (a fetch draws its own)."""
        out = []
        flow = self.flow
        now = time.monotonic() if flow is not None and flow.blocked else 0.0
        for queue in self.order.order() if self.order.strict else self.queues:
            if queue in self.paused:
                continue
            if now and flow.is_blocked(queue, now):  # type: ignore[union-attr]
                continue
            limit = self.limits.get(queue)
            if limit is not None and self.per_queue[queue] >= limit:
                continue
            executor = self._executor(queue)
            if not executor.healthy or self._budget.get(id(executor), 1) <= 0:
                continue
            out.append(queue)
        return out

    def _measure_room(self) -> int:
        """How many tasks the executors can take now (``_budget``, per executor): what their
        free slots can start under ``worker.concurrency``, plus their prefetch room; an
        executor without slots of its own (in-process) gets concurrency minus tasks held."""
        # A task whose outcome is still being written keeps its place until it leaves
        # `active`: tasks held never exceed concurrency plus the prefetch.
        room = self.capacity.room - self._recording
        budget: dict[int, int] = {}
        for key, executor in self._distinct.items():
            placeable = getattr(executor, "placeable", None)
            if placeable is None:
                n = self.concurrency - len(self.in_flight)
            else:
                n = placeable(max(room, 0))
                handlers_for = getattr(executor, "handlers_for", None)  # batches: n tasks, fewer handlers
                room -= n if handlers_for is None else handlers_for(n)
            budget[key] = max(n, 0)
        self._budget = budget
        return sum(budget.values())

    def _executor(self, queue: str) -> Executor:
        executor = self._executors.get(queue)
        if executor is None:
            executor = self._executors[queue] = self.executor_for(queue)
            self._distinct[id(executor)] = executor
        return executor

    async def run(self) -> None:
        """Fetch and dispatch until ``stop_fetching``. Never sleeps on a fixed poll."""
        await self._refresh_paused()
        while self.fetching:
            try:
                await self._step()
                self.loop_error = ""
            except Exception as exc:  # noqa: BLE001 - a bug here must not silently stop all work
                self.loop_error = f"{type(exc).__name__}: {exc}"  # readiness reports it
                log.exception("processor loop error; continuing in 1s")
                await asyncio.sleep(1.0)
        self._stopped.set()

    async def _step(self) -> None:
        free = self._measure_room()
        # A fetch under load waits briefly to take at least 1/8 of what the executors can
        # hold at once (their slots and prefetch, not worker.concurrency, which they may lack)
        self._most_room = most = max(self._most_room, free)
        min_fetch = max(1, min(self.batch, most // 8))
        if free <= 0 or (free < min_fetch and self._took_last and not self._waited_for_slots):
            # Under load, let a few slots free up so one round trip takes several tasks; a
            # short wait at most, and never when idle (then every slot is free anyway).
            self._slot_freed.clear()
            self._waited_for_slots = free > 0
            await self._wait_or_stop(self._slot_freed.wait(), 1.0 if free <= 0 else GATHER_SLOTS)
            return
        self._waited_for_slots = False
        if time.monotonic() - self._paused_checked > 1.0:
            await self._refresh_paused()
        queues = self.eligible()
        if not queues and self.flow is not None and self.flow.blocked:
            # held by a flow limit (a token not yet due), which a dequeue just told us: the
            # agent is waiting on purpose, not failing to dequeue (readiness)
            self.last_dequeue_ok = time.monotonic()
        self._no_fetch.clear()
        try:
            took = await self._fetch(queues, free) if queues else 0
        finally:
            self._no_fetch.set()
        self._took_last = took > 0
        if took or not self.fetching:
            return
        await self._refresh_paused()
        if self.waiters is not None:
            self.waiters.sync(self.eligible())  # not on a queue a limit holds: it has work
        self.signal.idle.set()
        await self.signal.wait(self._idle_wait())
        self.signal.idle.clear()

    def _idle_wait(self) -> float:
        """Seconds to wait for work: 1, or until a queue a flow limit holds may give again."""
        until = self.flow.next_unblock() if self.flow is not None else None
        if until is None:
            return 1.0
        return min(1.0, max(0.0, until - time.monotonic()))

    async def _wait_or_stop(self, awaitable, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(awaitable, timeout)

    async def _refresh_paused(self) -> None:
        try:
            self.paused = await self.broker.paused_queues(self.queues)
            self._paused_checked = time.monotonic()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.observer.redis_error("paused", exc)

    def _room(self, queue: str, want: int) -> int:
        limit = self.limits.get(queue)
        budget = self._budget.get(id(self._executor(queue)), want)
        want = min(want, budget)
        return want if limit is None else min(want, limit - self.per_queue[queue])

    def _within_budget(self, counts: dict[str, int]) -> dict[str, int]:
        """Cap a fetch's per-queue counts so that queues sharing an executor together take
        no more than it can start (or hold as prefetch)."""
        left = dict(self._budget)
        out = {}
        for queue, n in counts.items():
            key = id(self._executor(queue))
            n = min(n, left.get(key, n))
            if key in left:
                left[key] -= n
            if n > 0:
                out[queue] = n
        return out

    def _allocate(self, queues: list[str], want: int) -> dict[str, int]:
        """Share ``want`` slots among queues by weight (asynq's odds, drawn per slot), so
        one round trip can take from several queues and the mix follows the weights."""
        weights = [self.order.weights.get(q, 1) for q in queues]
        counts = dict(Counter(self._rng.choices(queues, weights, k=want)))
        return {q: self._room(q, n) for q, n in counts.items()}

    def _draw(self, queues: list[str]) -> str:
        """One queue by weight: the first of asynq's weighted order, restricted to these."""
        return self._rng.choices(queues, [self.order.weights.get(q, 1) for q in queues])[0]

    def _weighted_order(self, queues: list[str]) -> list[str]:
        allowed = set(queues)
        return [q for q in self.order.order() if q in allowed]

    async def _fetch(self, queues: list[str], free: int) -> int:
        want = min(free, self.batch)
        try:
            if len(queues) > 1 and not self.order.strict:
                tasks, orphans = await self._fetch_weighted(queues, want)
            else:
                tasks, orphans = await self._fetch_in_order(queues, want)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.observer.redis_error("dequeue", exc)
            log.warning("dequeue failed: %s; retrying", exc)
            await asyncio.sleep(0.5)
            return 0
        self.last_dequeue_ok = time.monotonic()
        for orphan in orphans:
            log.warning("a task ID had no task hash and was dropped: %s", orphan)
        self._dispatch(tasks)
        return len(tasks)

    async def _fetch_weighted(self, queues: list[str], want: int) -> tuple[list[DequeuedTask], list[str]]:
        """One round trip by weight among the queues not recently found empty; if that
        brings nothing, the other such queues in weighted order (a round trip each, until
        one gives). Queues found empty are left out for DRAINED_MEMORY seconds; when all
        are, all are tried again (an idle agent waits on all of them anyway)."""
        now = time.monotonic()
        empty_at = self._empty_at
        candidates = [q for q in queues if now - empty_at.get(q, -DRAINED_MEMORY) >= DRAINED_MEMORY]
        if not candidates:
            candidates = queues  # all recently empty: look again (new work may have come)
        if len(candidates) > SPREAD_MAX_QUEUES:
            # Many queues: one queue per round trip, drawn by weight (asynq's odds per
            # dequeue), taking a whole batch, rather than one ID from each.
            first = self._draw(candidates)
            counts = {first: self._room(first, want)}
        else:
            counts = self._within_budget(self._allocate(candidates, want))
        if not counts:
            return [], []
        tasks, orphans, taken = await self.broker.dequeue_counts(counts)
        for queue, n in taken.items():
            if n:
                self.observer.dequeued(queue, n)
            if n < counts[queue] and not (self.flow and queue in self.flow.blocked):
                empty_at[queue] = now  # gave less than asked, and no limit held it: empty for now
        if tasks:
            return tasks, orphans
        rest = [q for q in self._weighted_order(candidates) if q not in counts]
        more, dropped = await self._fetch_in_order(rest, want)
        gave = more[0].queue if more else None
        for queue in rest:
            if queue == gave:
                break
            if not (self.flow and queue in self.flow.blocked):
                empty_at[queue] = now
        return more, orphans + dropped

    async def _fetch_in_order(self, queues: list[str], want: int) -> tuple[list[DequeuedTask], list[str]]:
        """Try queues in priority order; stop at the first that yields tasks."""
        tasks, orphans = await self.broker.dequeue_first(queues, lambda q: self._room(q, want))
        if tasks:
            self.observer.dequeued(tasks[0].queue, len(tasks))
        return tasks, orphans

    def _dispatch(self, tasks: list[DequeuedTask]) -> None:
        """Hold and start the tasks of one fetch (one lease registration, one count per queue)."""
        if not tasks:
            return
        now = time.monotonic()
        in_flight, per_queue = self.in_flight, self.per_queue
        self.leases.add_many(tasks)
        if self.tracer is not None:  # one check per fetch while tracing is off
            self.tracer.started(tasks)
        started: dict[str, int] = {}
        for task in tasks:
            queue = task.queue
            started[queue] = started.get(queue, 0) + 1
            per_queue[queue] = per_queue.get(queue, 0) + 1
            entry = in_flight[task.id] = InFlight(task, now)
            if not self._start_directly(entry):  # outcomes arrive in later loop turns
                self._in_handler(entry, self._handle(entry))
        for queue, count in started.items():
            self.observer.tasks_started(queue, count)

    def _in_handler(self, entry: InFlight, coro) -> None:
        """Run ``coro`` as the entry's handler task; the entry is finished when it ends."""
        entry.handler = asyncio.create_task(coro)
        self._handlers.add(entry.handler)
        # A callback, not a ``finally``: it also runs for a task cancelled before it started.
        entry.handler.add_done_callback(lambda handler: self._handler_done(entry, handler))

    def _start_directly(self, entry: InFlight) -> bool:
        """The hot path: hand the task to an executor that can start it at once and call us
        back with its outcome. False when it cannot (then a handler task waits for it)."""
        task = entry.task
        if task.message is None:
            return False
        executor = self._executor(task.queue)
        start = getattr(executor, "start_task", None)
        if start is None:
            return False
        if 0 < task.message.deadline <= time.time():
            return False  # past its absolute deadline: the handler path fails it
        entry.executor = executor
        if start(task, lambda outcome: self._answered(entry, outcome)):
            return True
        entry.executor = None
        return False

    def _handler_done(self, entry: InFlight, handler: asyncio.Task) -> None:
        self._handlers.discard(handler)
        self._finish(entry)

    def _finish(self, entry: InFlight) -> None:
        self._finish_many([entry], [entry.task])

    def _finish_many(self, entries: list[InFlight], tasks: list[DequeuedTask]) -> None:
        """These tasks are no longer ours (``tasks``: their ``task``, in the same order)."""
        in_flight, per_queue = self.in_flight, self.per_queue
        recorded = 0
        for entry in entries:
            task = entry.task
            if in_flight.get(task.id) is entry:
                del in_flight[task.id]
            per_queue[task.queue] -= 1
            recorded += entry.recording
        self._recording -= recorded
        self.leases.remove_many(tasks)
        flow = self.flow
        if flow is not None and flow.slot_blocked:  # a queue held by its running tasks
            for task in tasks:
                flow.slot_freed(task.queue)
        if not in_flight:
            self._all_done.set()
        self._slot_freed.set()
        self.signal.notify()

    # -- one task -----------------------------------------------------------------------

    def _answered(self, entry: InFlight, outcome: Outcome) -> None:
        """An outcome for a task started directly: write it in this turn's pipeline."""
        task = entry.task
        if entry.interrupted in ("abandoned", "requeued"):
            self._drop(entry)
            return
        if entry.interrupted == "cancelled" and outcome.kind != "success":
            outcome = Outcome("retry", error=CANCELED_ERROR)
        self._recording_starts(entry, outcome)
        if outcome.kind == "success" and self._lane_open and task.message and not task.message.retention:
            self._to_delete(entry, outcome)
            return
        try:
            call, state = self._plan(task, outcome)
        except Exception:  # noqa: BLE001 - one task's trouble must never stop the agent
            log.exception("unexpected error while handling task %s of queue %s", task.id, task.queue)
            self._finish(entry)
            return
        self.broker.write_outcome_soon(
            task, call, lambda error: self._written(entry, outcome, state, error))

    def _recording_starts(self, entry: InFlight, outcome: Outcome) -> None:
        """The outcome is being written: too late to interrupt, and the task keeps its
        place in the room count until it is written (``_finish_many``)."""
        entry.recording = True
        self._recording += 1
        if outcome.kind == "requeue":
            self.requeued += 1

    def _to_delete(self, entry: InFlight, outcome: Outcome) -> None:
        """The common success (no retention): collected per queue, written for all of this
        loop turn as one ``done_many`` call."""
        lane = self._deletions.get(entry.task.queue)
        if lane is None:
            lane = self._deletions[entry.task.queue] = []
        lane.append((entry, outcome))
        if not self._deletions_due:
            self._deletions_due = True
            asyncio.get_running_loop().call_soon(self._write_deletions)

    def _write_deletions(self) -> None:
        deletions, self._deletions, self._deletions_due = self._deletions, {}, False
        for queue, lane in deletions.items():
            self.broker.done_many_soon(queue, [entry.task for entry, _ in lane],
                                       lambda errors, lane=lane: self._deleted(lane, errors))

    def _deleted(self, lane: list[tuple[InFlight, Outcome]], errors: list[BaseException | None]) -> None:
        done: list[InFlight] = []
        for (entry, outcome), error in zip(lane, errors, strict=True):
            if error is None:
                done.append(entry)
            else:
                self._written(entry, outcome, "deleted", error)
        if done:
            now = time.monotonic()
            tasks = [entry.task for entry in done]
            self.observer.tasks_deleted(tasks[0].queue, tasks, [now - entry.started for entry in done])
            self._finish_many(done, tasks)

    def _written(self, entry: InFlight, outcome: Outcome, state: str, error: BaseException | None) -> None:
        task = entry.task
        if error is None:
            self.observer.task_finished(task, outcome, state, time.monotonic() - entry.started)
        elif isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError)):
            # Redis trouble: retry the write in the slow path until the lease runs out.
            self.observer.redis_error("outcome", error)
            self._in_handler(entry, self._record_later(entry, outcome))
            return
        else:
            self._record_failed(task, error)
        self._finish(entry)

    async def _record_later(self, entry: InFlight, outcome: Outcome) -> None:
        await asyncio.sleep(1.0)
        state = await self._record(entry.task, outcome)
        self.observer.task_finished(entry.task, outcome, state, time.monotonic() - entry.started)

    def _record_failed(self, task: DequeuedTask, error: BaseException) -> str:
        """Report an outcome write that Redis refused; returns the task's resulting state."""
        if isinstance(error, LeaseLostError):
            self.observer.lease_lost(task)
            log.warning("task %s (queue %s): lease lost before its outcome could be written; "
                        "left to recovery", task.id, task.queue)
            return "lease_lost"
        if isinstance(error, TaskNotFoundError):
            log.warning("%s", error)
            return "not_found"
        log.error("task %s (queue %s): its outcome could not be written: %s: %s",
                  task.id, task.queue, type(error).__name__, error)
        return "error"

    async def _handle(self, entry: InFlight) -> None:
        task = entry.task
        try:
            try:
                outcome = await self._execute(task)
            except asyncio.CancelledError:
                if not entry.interrupted:
                    raise
                asyncio.current_task().uncancel()  # our own interrupt, handled here
                outcome = Outcome("retry", error=CANCELED_ERROR)
            if entry.interrupted in ("abandoned", "requeued"):
                self.observer.task_dropped(task)
                return
            self._recording_starts(entry, outcome)
            state = await self._record(task, outcome)
            self.observer.task_finished(task, outcome, state, time.monotonic() - entry.started)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one task's trouble must never stop the agent
            log.exception("unexpected error while handling task %s of queue %s", task.id, task.queue)

    async def _execute(self, task: DequeuedTask) -> Outcome:
        if task.message is None:
            return Outcome("archive", error=task.decode_error)
        deadline = processing_deadline(task.message, task.started_at)
        if deadline <= time.time():
            return Outcome("retry", error=DEADLINE_ERROR)
        return await self.executor_for(task.queue).execute(task, deadline)

    async def _record(self, task: DequeuedTask, outcome: Outcome) -> str:
        """Write the outcome; retry Redis errors until the lease runs out (asynq's syncer)."""
        while True:
            try:
                return await self._write(task, outcome)
            except (LeaseLostError, TaskNotFoundError) as exc:
                return self._record_failed(task, exc)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.observer.redis_error("outcome", exc)
                if not task.lease_valid():
                    self.observer.lease_lost(task)
                    log.warning("task %s (queue %s): Redis unreachable (%s) until its lease ran "
                                "out; outcome %r not written, left to recovery",
                                task.id, task.queue, exc, outcome.kind)
                    return "lease_lost"
                await asyncio.sleep(1.0)

    async def _write(self, task: DequeuedTask, outcome: Outcome) -> str:
        call, state = self._plan(task, outcome)
        await self.broker.write_outcome(task, call)
        return state

    def _plan(self, task: DequeuedTask, outcome: Outcome):
        """The outcome script call for ``outcome`` and the state it leaves the task in."""
        if outcome.kind == "success":
            return self.broker.plan_success(task, outcome.result)
        if outcome.kind == "requeue":
            return self.broker.plan_requeue(task)
        return self.broker.plan_failure(task, outcome.error or "unknown error",
                                        skip_retry=outcome.kind == "archive", retry_in=outcome.retry_in)

    # -- control ------------------------------------------------------------------------

    def cancel(self, task_id: str) -> bool:
        """asynq:cancel: the task fails with "context canceled" (and the child is told)."""
        entry = self.in_flight.get(task_id)
        return entry is not None and self._interrupt(entry, "cancelled")

    def abandon(self, task: DequeuedTask) -> None:
        """The lease is lost: stop waiting for the task and write nothing for it."""
        entry = self.in_flight.get(task.id)
        if entry is not None and entry.task is task and self._interrupt(entry, "abandoned"):
            self.observer.lease_lost(task)
            log.warning("lost the lease of task %s in queue %s (recovered elsewhere?); its outcome "
                        "will not be written", task.id, task.queue)

    def _interrupt(self, entry: InFlight, why: str) -> bool:
        """Stop waiting for a task's executor (the child is asked to cancel it). A cancelled
        task then fails with "context canceled"; an abandoned or requeued one gets nothing
        written here."""
        if entry.interrupted or entry.recording:
            return False
        if entry.handler is not None:
            entry.interrupted = why
            entry.handler.cancel()  # the handler task turns this into its outcome
            return True
        if entry.executor is None:
            return False
        entry.interrupted = why
        if why == "cancelled":
            # Ask the child and wait for its answer: the outcome is written only once the
            # handler has stopped (an async one is cancelled, a sync one runs to its end), so
            # the retry never runs beside the first run.
            self._in_background(entry.executor.cancel(entry.task.id))
            return True
        entry.executor.withdraw(entry.task.id)
        self._drop(entry)
        return True

    def _in_background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _drop(self, entry: InFlight) -> None:
        """A task left without an outcome from us (abandoned, or requeued by the drain)."""
        self.observer.task_dropped(entry.task)
        self._finish(entry)

    def stop_fetching(self) -> None:
        self.fetching = False
        self.signal.notify()
        self._slot_freed.set()

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> int:
        """Stop fetching; let the running handlers finish for up to ``timeout`` (``hurry``,
        a second signal, cuts it short); then stop what still runs and wait until it has
        exited; only then give the unfinished tasks back to their queues (ours only). No task
        runs in two places at once because of a drain. Returns how many were requeued."""
        self.stop_fetching()
        deadline = time.monotonic() + timeout
        # Tasks a fetch in flight brings are ours to finish or requeue: wait for it first.
        await self._wait_or_stop(self._no_fetch.wait(), timeout)
        before = self.requeued
        executors = list(self._distinct.values())
        left = max(0.0, deadline - time.monotonic())
        await asyncio.gather(*(self._drain_executor(e, left, hurry) for e in executors))
        # The children have exited: every task they held has its outcome, now being written.
        if self.in_flight:
            self._all_done.clear()
            await self._wait_or_stop(self._all_done.wait(), 2.0)
        requeued = self.requeued - before
        for entry in list(self.in_flight.values()):  # executors without a drain of their own
            if not self._interrupt(entry, "requeued"):
                continue
            try:
                await self.broker.requeue(entry.task)
                requeued += 1
            except (LeaseLostError, TaskNotFoundError) as exc:
                log.warning("could not requeue task %s: %s", entry.task.id, exc)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.error("could not requeue task %s (Redis unreachable: %s); its lease will "
                          "expire and it will be recovered", entry.task.id, exc)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=1.0)
        return requeued

    async def _drain_executor(self, executor: Executor, timeout: float,
                              hurry: asyncio.Event | None) -> None:
        drain = getattr(executor, "drain", None)
        if drain is not None:
            await drain(timeout, hurry)
            return
        # In-process executor: wait for its tasks, then interrupt them (drain() requeues).
        if self.in_flight:
            self._all_done.clear()
            all_done = asyncio.ensure_future(self._all_done.wait())
            await wait_unless_hurried(all_done, timeout, hurry)
            all_done.cancel()

    def running_tasks(self) -> list[DequeuedTask]:
        """Tasks whose handler runs now (not waiting in a child for a slot)."""
        out = []
        for entry in list(self.in_flight.values()):
            executor = entry.executor or self._executors.get(entry.task.queue)
            started = getattr(executor, "handler_started", None)
            if started is None or started(entry.task.id):
                out.append(entry.task)
        return out

"""LeaseKeeper: renews the lease of every in-flight task from its own OS thread.

A thread with its own synchronous Redis connection keeps leases alive even when the
event loop is busy (a burst of results, a slow callback), which an asyncio timer could
not promise. It does not keep a *stuck* agent alive forever: it renews only while the
event loop has ticked recently (``loop_alive``), so a wedged agent loses its leases and
its tasks are recovered by others.

Leases are short (``LEASE_SECONDS``, renewed every ``LEASE_RENEW_INTERVAL``) so a dead agent's
tasks are recovered within seconds (docs/reliability.md, "Fast recovery"). A renewal goes
through renew_leases.lua: it renews a lease only while it is still ours (its score is one we
wrote) and we may still write its outcome (Redis's clock is not past it plus the fence grace).

The fence marker of a task (its hash's ``fenced_lease``, which lets recovery take the lease 2 s
after it expired instead of asynq's 30 s) is written once per task, at its first renewal; after
that a renewal writes one record per queue (``keys.lease_renewal``: this keeper's ``holder`` and
the score all its renewed leases got), not one marker per task (docs/reliability.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import redis
from redis.exceptions import NoScriptError

from agent.broker import DequeuedTask, keys
from agent.broker.plans import LEASE_FENCE_GRACE, LEASE_RENEW_INTERVAL, LEASE_SECONDS
from agent.broker.scripts import source

#: The event loop counts as stalled (the keeper stops renewing, so the agent's tasks go to
#: others) after this many seconds without a tick; below LEASE_SECONDS, so a wedged agent's
#: tasks are recovered about LOOP_STALL_SECONDS + LEASE_SECONDS + 2 s after it wedged.
LOOP_STALL_SECONDS = 6.0
#: After a failed renewal the keeper tries again this soon (not a whole interval later).
RETRY_AFTER_ERROR = 0.5
#: Unconfirmed renewals remembered per task (see ``_candidates``).
MAX_UNCONFIRMED = 8
#: Lifetime of a renewal record after its last write: it must outlast the recovery of the
#: holder's leases (their expiry + 2 s, or later when no agent is up to recover them).
RENEWAL_RECORD_SECONDS = 3600
#: A queue's record is kept this long past a lease that ran out here (its recovery time).
KEEP_RECORD_AFTER_LOSS = 30.0

log = logging.getLogger("agent.runtime")


class LeaseKeeper:
    def __init__(self, client: redis.Redis, interval: float = LEASE_RENEW_INTERVAL,
                 lease_seconds: int = LEASE_SECONDS,
                 loop_alive: Callable[[], bool] = lambda: True,
                 on_lost: Callable[[DequeuedTask], None] = lambda task: None,
                 holder: str | None = None) -> None:
        self.client = client
        #: names this keeper in the markers and records it writes; new for every keeper
        self.holder = holder or uuid.uuid4().hex[:16]
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.loop_alive = loop_alive
        self.on_lost = on_lost
        # by (queue, task id): an ID is unique within its queue only
        self._tasks: dict[tuple[str, str], DequeuedTask] = {}
        # expiries sent in renewals whose reply never came (Redis may have applied them)
        self._unconfirmed: dict[tuple[str, str], list[int]] = {}
        # tasks whose marker names this holder (confirmed by a renewal's reply)
        self._marked: set[tuple[str, str]] = set()
        # queues whose renewal record we wrote and have not deleted
        self._recorded: set[str] = set()
        # a queue where a lease ran out here is kept recorded until then (agent's clock): the
        # record is what makes that lease fenced, so it is recovered 2 s after it expired
        self._keep_until: dict[str, float] = {}
        self._renew = client.register_script(source("renew_leases"))
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
                held[task.queue, task.id] = task

    def remove_many(self, tasks: list[DequeuedTask]) -> None:
        with self._lock:
            held = self._tasks
            for task in tasks:
                if held.get((task.queue, task.id)) is task:
                    del held[task.queue, task.id]
                    self._unconfirmed.pop((task.queue, task.id), None)
                    self._marked.discard((task.queue, task.id))

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
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.interval
            if not self.loop_alive():
                log.error("event loop unresponsive: not renewing leases, so other agents can recover our tasks")
                continue
            try:
                self.renew_once()
            except Exception as exc:  # noqa: BLE001 - keep the thread alive; leases run out if this persists
                self.errors += 1
                wait = min(self.interval, RETRY_AFTER_ERROR)
                log.warning("lease renewal failed: %s: %s", type(exc).__name__, exc)

    def _candidates(self, task: DequeuedTask) -> list[int]:
        """Scores our lease on ``task`` may have in Redis: the last confirmed one, and those
        of renewals whose reply was lost (Redis may have applied them)."""
        with self._lock:
            return [int(task.lease_expiry), *self._unconfirmed.get((task.queue, task.id), ())]

    def renew_once(self) -> None:
        """Extend every live lease to now + lease_seconds; report leases we no longer hold."""
        now = time.time()
        by_queue: dict[str, list[DequeuedTask]] = defaultdict(list)
        for task in self.held():
            if task.lease_valid(now):
                by_queue[task.queue].append(task)
            else:
                self._keep_until[task.queue] = max(self._keep_until.get(task.queue, 0),
                                                   task.lease_expiry + KEEP_RECORD_AFTER_LOSS)
                self._lost(task)
        idle = [q for q in self._recorded if q not in by_queue and self._keep_until.get(q, 0) <= now]
        if not by_queue and not idle:
            return
        expiry = int(now) + self.lease_seconds
        calls = []
        for queue, tasks in by_queue.items():
            args: list = [expiry, LEASE_FENCE_GRACE, keys.task_prefix(queue), self.holder,
                          RENEWAL_RECORD_SECONDS]
            with self._lock:
                marked = [(task.queue, task.id) in self._marked for task in tasks]
            for task, mark in zip(tasks, marked, strict=True):
                candidates = self._candidates(task)
                args += [task.id, 1 if mark else 0, len(candidates), *candidates]
            calls.append(([keys.lease(queue), keys.lease_renewal(queue, self.holder)], args))
        try:
            replies = self._send(calls, idle)
        except Exception:
            self._remember(by_queue, expiry)  # the renewals may have been applied
            raise
        self._recorded.difference_update(idle)
        for queue in idle:
            self._keep_until.pop(queue, None)
        self._recorded.update(by_queue)
        failed = None
        for (_queue, tasks), scores in zip(by_queue.items(), replies, strict=True):
            if isinstance(scores, Exception):
                self._remember({_queue: tasks}, expiry)
                failed = scores
                continue
            for task, score in zip(tasks, scores, strict=True):
                if score is not None:
                    with self._lock:
                        task.lease_expiry = int(score)
                        self._unconfirmed.pop((task.queue, task.id), None)
                        if self._tasks.get((task.queue, task.id)) is task:
                            self._marked.add((task.queue, task.id))
                    self.extensions += 1
                elif self._holds(task):  # still ours here, but not in Redis: recovered (or taken)
                    task.lease_expiry = 0
                    self._lost(task)
                # else: it finished (its outcome removed the lease) while we were renewing
        if failed is not None:
            raise failed

    def _send(self, calls: list[tuple[list[str], list]], idle: list[str] = ()) -> list:
        """One EVALSHA of renew_leases.lua per queue, in one round trip (plain EVALSHA: a
        pipeline handed Script objects asks SCRIPT EXISTS first, one more round trip). The
        renewal records of queues where we hold nothing now are deleted in the same trip: no
        lease of ours there can match them."""
        def run(batch: list[tuple[list[str], list]], drop: list[str] = ()) -> list:
            pipe = self.client.pipeline(transaction=False)
            for names, args in batch:
                pipe.evalsha(self._renew.sha, len(names), *names, *args)
            for queue in drop:
                pipe.delete(keys.lease_renewal(queue, self.holder))
            replies = pipe.execute(raise_on_error=False)
            for reply in replies[len(batch):]:
                if isinstance(reply, Exception):
                    raise reply
            return replies[:len(batch)]

        replies = run(calls, idle)
        redo = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if redo:  # Redis lost its scripts (a restart): load and send those again
            self.client.script_load(self._renew.script)
            for i, reply in zip(redo, run([calls[i] for i in redo]), strict=True):
                replies[i] = reply
        return replies

    def _remember(self, by_queue: dict[str, list[DequeuedTask]], expiry: int) -> None:
        with self._lock:
            for tasks in by_queue.values():
                for task in tasks:
                    if self._tasks.get((task.queue, task.id)) is task:
                        sent = self._unconfirmed.setdefault((task.queue, task.id), [])
                        if expiry not in sent:
                            sent.append(expiry)
                            del sent[:-MAX_UNCONFIRMED]

    def _holds(self, task: DequeuedTask) -> bool:
        with self._lock:
            return self._tasks.get((task.queue, task.id)) is task

    def _lost(self, task: DequeuedTask) -> None:
        """Tell the processor; it logs and counts the loss if the task was still running."""
        self.remove(task)
        self.losses += 1
        self.on_lost(task)

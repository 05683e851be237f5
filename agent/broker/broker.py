"""The async Broker: every Redis read and write the agent makes, in asynq's format."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from agent.broker import keys, plans
from agent.broker.batch import ScriptBatcher, merged_statuses
from agent.broker.errors import (
    DuplicateTaskError,
    LeaseLostError,
    TaskIDConflictError,
    TaskNotFoundError,
)
from agent.broker.flow.control import FlowControl
from agent.broker.malformed import RAW_MSG_FIELD, check_message, stand_in_message
from agent.broker.messages import (
    ServerInfo,
    TaskMessage,
    WorkerInfo,
    encode,
)
from agent.broker.options import EnqueueOptions, EnqueueResult
from agent.broker.plans import (
    ASYNQ_LEASE_SECONDS,
    ASYNQ_RECOVERY_SKEW,
    FENCED_RECOVERY_SKEW,
    LEASE_EXPIRED_ERROR,
    LEASE_FENCE_GRACE,
    LEASE_SECONDS,
    ScriptCall,
)
from agent.broker.scripts import Scripts, fenced
from agent.broker.scripts import source as script_source
from agent.broker.taskinfo import TaskInfo, task_info_from_hash

log = logging.getLogger("agent.broker")


@dataclass(slots=True)
class DequeuedTask:
    """A task we hold. ``message`` is None when ``raw`` is malformed (not a TaskMessage, or
    one naming another ID or queue); ``decode_error`` then says why."""

    id: str
    queue: str
    raw: bytes
    message: TaskMessage | None
    lease_expiry: int  # unix s; we write nothing for this task once it has passed
    decode_error: str = ""
    started_at: float = field(default_factory=time.time)

    def lease_valid(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.lease_expiry

    def placeholder_message(self) -> TaskMessage:
        """The message written in place of a malformed one (``malformed.stand_in_message``)."""
        return stand_in_message(self.raw, self.id, self.queue)


@dataclass(frozen=True)
class ExpiredLease:
    id: str
    queue: str
    raw: bytes | None
    score: bytes = b""  # the lease score seen: the recovery write goes through only if unchanged
    fenced: bool = False  # our lease (fenced holder), past FENCED_RECOVERY_SKEW; else asynq's rule


#: Queues per list_lease_expired / reconcile call (one call per hash slot on a Cluster).
SCAN_CHUNK = 250
#: Expired leases listed per queue and call (the rest in the next tick).
SCAN_LIMIT = 1000


def _warn_archived_malformed(queue: str, task_id: str, reason: str) -> None:
    log.warning("archived task %s of queue %s: %s (its original msg is kept in the task hash "
                "field %s)", task_id, queue, reason, RAW_MSG_FIELD)


def _raise_for_enqueue(code: int, result: EnqueueResult) -> EnqueueResult:
    if code == 1:
        return result
    if code == 0:
        raise TaskIDConflictError(result.queue, result.id)
    raise DuplicateTaskError(result.queue, result.message.unique_key)


class Broker:
    """asynq-format operations over one ``redis.asyncio.Redis`` client.

    Outcome methods (``complete``, ``retry``, ``archive``, ``requeue``) refuse to write
    once the task's lease has expired (``LeaseLostError``), as asynq's worker does, so a
    task recovered and re-run elsewhere is never touched by a late writer.
    """

    def __init__(self, client: aioredis.Redis, batch_outcomes: bool = True) -> None:
        self.redis = client
        self.scripts = Scripts(client)
        self._registered_queues: set[str] = set()
        self._batcher = ScriptBatcher(client) if batch_outcomes else None
        # Recovery writes: retry / archive behind recover_claim.lua (the lease must be unchanged).
        self._claimed = {name: client.register_script(script_source("recover_claim") + "\n"
                                                      + script_source(name))
                         for name in ("retry", "retry_now", "archive")}
        self._writes: set[asyncio.Future] = set()
        #: the queues with flow limits (set by the agent): their dequeue checks the limits
        self.flow: FlowControl | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs) -> Broker:
        return cls(aioredis.Redis.from_url(url, **kwargs))

    async def close(self) -> None:
        await self.redis.aclose()

    def _run(self, call: ScriptCall, client=None):
        script, args = fenced(call)
        return getattr(self.scripts, script)(keys=call.keys, args=args, client=client)

    # -- producer side ------------------------------------------------------------------

    async def register_queues(self, queues: Iterable[str]) -> None:
        new = [q for q in queues if q not in self._registered_queues]
        if new:
            await self.redis.sadd(keys.ALL_QUEUES, *new)
            self._registered_queues.update(new)

    async def enqueue(self, task_type: str, payload: bytes | None = None,
                      options: EnqueueOptions | None = None, **kwargs) -> EnqueueResult:
        """Enqueue one task. kwargs are EnqueueOptions fields (queue, task_id, max_retry, ...)."""
        opts = options or EnqueueOptions(**kwargs)
        plan = plans.plan_enqueue(task_type, payload, opts)
        await self.register_queues([opts.queue])
        code = await self._run(plan.call)
        return _raise_for_enqueue(int(code), plan.result)

    async def enqueue_many(self, tasks: Sequence[tuple[str, bytes | None, EnqueueOptions]]
                           ) -> list[EnqueueResult | Exception]:
        """Enqueue a batch in one round trip; each item's result or error, in order."""
        planned = [plans.plan_enqueue(t, p, o) for t, p, o in tasks]
        await self.register_queues({o.queue for _, _, o in tasks})
        async with self.redis.pipeline(transaction=False) as pipe:
            for plan in planned:
                await self._run(plan.call, client=pipe)
            codes = await pipe.execute(raise_on_error=False)
        out: list[EnqueueResult | Exception] = []
        for plan, code in zip(planned, codes, strict=True):
            try:
                out.append(code if isinstance(code, Exception) else _raise_for_enqueue(int(code), plan.result))
            except Exception as exc:  # noqa: BLE001 - reported per item
                out.append(exc)
        return out

    # -- worker side --------------------------------------------------------------------

    async def dequeue(self, queue: str, count: int = 1, lease_seconds: int = LEASE_SECONDS
                      ) -> tuple[list[DequeuedTask], list[str]]:
        """Take up to ``count`` tasks from one queue. Returns (tasks, orphan IDs dropped)."""
        now = time.time()
        flow = self.flow
        if flow and queue in flow.limits:
            flat = flow.reply(queue, await self._run(flow.call(queue, now, count, lease_seconds)), count)
        else:
            flat = await self._run(plans.dequeue_call(queue, now, count, lease_seconds))
        orphans: list[str] = []
        tasks = self._tasks_from_reply(queue, flat, now, int(now) + lease_seconds, orphans)
        return tasks, orphans

    async def dequeue_counts(self, counts: dict[str, int], lease_seconds: int = LEASE_SECONDS
                             ) -> tuple[list[DequeuedTask], list[str], dict[str, int]]:
        """Take up to ``counts[queue]`` tasks from each queue, all in one round trip.

        Returns (tasks, orphan IDs dropped, how many each queue yielded)."""
        now = time.time()
        queues = [q for q, n in counts.items() if n > 0]
        flow = self.flow if self.flow else None
        calls = [flow.call(q, now, counts[q], lease_seconds) if flow and q in flow.limits
                 else plans.dequeue_call(q, now, counts[q], lease_seconds) for q in queues]
        replies = await self._batcher.execute(calls) if self._batcher else [
            await self._run(c) for c in calls]
        expiry = int(now) + lease_seconds
        tasks: list[DequeuedTask] = []
        orphans: list[str] = []
        taken: dict[str, int] = {}
        for queue, flat in zip(queues, replies, strict=True):
            if isinstance(flat, Exception):
                raise flat
            if flow and queue in flow.limits:
                flat = flow.reply(queue, flat, counts[queue])
            got = self._tasks_from_reply(queue, flat, now, expiry, orphans)
            taken[queue] = len(got)
            tasks.extend(got)
        return tasks, orphans, taken

    def _tasks_from_reply(self, queue: str, flat: list, now: float, expiry: int,
                          orphans: list[str]) -> list[DequeuedTask]:
        tasks = []
        for i in range(0, len(flat), 2):
            task_id = flat[i].decode() if isinstance(flat[i], bytes) else flat[i]
            raw = flat[i + 1]
            if raw is None:
                orphans.append(task_id)
                continue
            message, error = check_message(raw, task_id, queue)
            tasks.append(DequeuedTask(task_id, queue, raw, message, expiry, error, now))
        return tasks

    async def dequeue_first(self, queues: Sequence[str], count: int | Callable[[str], int] = 1,
                            lease_seconds: int = LEASE_SECONDS) -> tuple[list[DequeuedTask], list[str]]:
        """Try queues in the given order; stop at the first that yields tasks. ``count`` is a
        number, or a function giving how many to take from each queue."""
        orphans: list[str] = []
        for queue in queues:
            want = count(queue) if callable(count) else count
            tasks, dropped = await self.dequeue(queue, want, lease_seconds)
            orphans.extend(dropped)
            if tasks:
                return tasks, orphans
        return [], orphans

    def _check_lease(self, task: DequeuedTask) -> None:
        if not task.lease_valid():
            raise LeaseLostError(task.queue, task.id)

    def _fenced(self, task: DequeuedTask, call: ScriptCall) -> ScriptCall:
        # Fenced: Redis refuses the write if it arrives after our lease plus LEASE_FENCE_GRACE
        # (by Redis's clock) -- a command delayed by a network stall must not finish a task
        # that another agent recovered meanwhile (recovery of our leases starts
        # FENCED_RECOVERY_SKEW > LEASE_FENCE_GRACE after the lease, by the same clock).
        return ScriptCall(call.script, call.keys, call.args, int(task.lease_expiry) + LEASE_FENCE_GRACE)

    @staticmethod
    def _outcome_error(task: DequeuedTask, exc: BaseException) -> BaseException:
        """What an outcome script's error means for the task."""
        if isinstance(exc, ResponseError):
            if "NOT FOUND" in str(exc):
                return TaskNotFoundError(task.queue, task.id, "no longer active (recovered elsewhere?)")
            if "LEASE EXPIRED" in str(exc):
                return LeaseLostError(task.queue, task.id)
        return exc

    async def write_outcome(self, task: DequeuedTask, call: ScriptCall) -> None:
        """Run an outcome call planned by ``plan_*`` for a task we hold. Raises
        ``LeaseLostError`` (our lease ran out), ``TaskNotFoundError`` (no longer active) or
        the Redis error."""
        self._check_lease(task)
        call = self._fenced(task, call)
        try:
            if self._batcher is not None:
                await self._batcher.run(call)
            else:
                await self._run(call)
        except ResponseError as exc:
            raise self._outcome_error(task, exc) from exc
        self._after_write(task, call)

    @staticmethod
    def _after_write(task: DequeuedTask, call: ScriptCall) -> None:
        """An outcome is written: a malformed task's archive gets its one WARNING line."""
        if task.message is None and call.script == "archive":
            _warn_archived_malformed(task.queue, task.id, task.decode_error)

    def write_outcome_soon(self, task: DequeuedTask, call: ScriptCall,
                           on_written: Callable[[BaseException | None], None]) -> None:
        """``write_outcome`` for the hot path: the write joins this loop turn's pipeline and
        ``on_written`` gets None, or the error (``LeaseLostError``, ``TaskNotFoundError``, a
        Redis error), once it is done. Without a batcher the write runs as its own task."""
        if not task.lease_valid():
            on_written(LeaseLostError(task.queue, task.id))
            return

        def written(result) -> None:
            if isinstance(result, BaseException):
                on_written(self._outcome_error(task, result))
                return
            self._after_write(task, call)
            on_written(None)

        if self._batcher is not None:
            self._batcher.submit(self._fenced(task, call), written)
            return

        async def write() -> None:
            try:
                await self.write_outcome(task, call)
            except Exception as exc:  # noqa: BLE001 - handed to on_written
                on_written(exc)
            else:
                on_written(None)

        pending = asyncio.ensure_future(write())
        self._writes.add(pending)
        pending.add_done_callback(self._writes.discard)

    @property
    def batching(self) -> bool:
        """Outcome writes of one loop turn share a pipeline (``done_many_soon`` needs it)."""
        return self._batcher is not None

    def done_many_soon(self, queue: str, tasks: Sequence[DequeuedTask],
                       on_written: Callable[[list[BaseException | None]], None]) -> None:
        """Success without retention for tasks of one queue, as one ``done_many`` call in
        this loop turn's pipeline (the same end state as ``complete`` for each); fenced by
        the earliest lease. ``on_written`` gets one error or None per task, in order: like
        ``write_outcome_soon``, a task whose lease has expired gets ``LeaseLostError`` and is
        not written. Needs ``batching``."""
        assert self._batcher is not None
        now = time.time()
        errors: list[BaseException | None] = [
            None if t.lease_valid(now) else LeaseLostError(t.queue, t.id) for t in tasks]
        live = [t for t, error in zip(tasks, errors, strict=True) if error is None]
        if not live:
            on_written(errors)
            return
        # IDs as bytes: the cheapest argument for redis-py to pack
        call = plans.done_many_call(
            queue, [(t.id.encode(), t.message.unique_key if t.message else "") for t in live], now)
        fence = min(t.lease_expiry for t in live) + LEASE_FENCE_GRACE

        def written(result) -> None:
            statuses = iter(merged_statuses(result, len(live)))
            for i, error in enumerate(errors):
                if error is None:
                    status = next(statuses)
                    errors[i] = None if status == b"OK" else self._outcome_error(tasks[i], status)
            on_written(errors)

        self._batcher.submit(ScriptCall(call.script, call.keys, call.args, fence), written)

    def _message(self, task: DequeuedTask) -> TaskMessage:
        return task.message if task.message is not None else task.placeholder_message()

    def plan_success(self, task: DequeuedTask, result: bytes | None = None) -> tuple[ScriptCall, str]:
        """Success: completed with retention (and result) if msg.retention > 0, else deleted.
        Returns the call and the state it leaves."""
        msg = self._message(task)
        if msg.retention > 0:
            return plans.mark_complete_call(msg, time.time(), result), "completed"
        return plans.done_call(msg, time.time()), "deleted"

    def plan_failure(self, task: DequeuedTask, error: str, *, skip_retry: bool = False,
                     retry_in: float | None = None) -> tuple[ScriptCall, str]:
        """Retry or archive as asynq decides. Returns the call and the state it leaves."""
        msg = self._message(task)
        now = time.time()
        if task.message is None or plans.failure_decision(msg, skip_retry) == "archive":
            raw = task.raw if task.message is None else None
            return plans.archive_call(msg, error, now, raw), "archived"
        delay = plans.default_retry_delay(msg.retried) if retry_in is None else retry_in
        return plans.retry_call(msg, error, now + delay, now, True), "retry"

    async def complete(self, task: DequeuedTask, result: bytes | None = None) -> None:
        """Success: completed with retention (and result) if msg.retention > 0, else deleted."""
        await self.write_outcome(task, self.plan_success(task, result)[0])

    async def write_result(self, task: DequeuedTask, data: bytes) -> int:
        self._check_lease(task)
        await self.redis.hset(keys.task_key(task.queue, task.id), "result", data)
        return len(data)

    async def retry(self, task: DequeuedTask, error: str, retry_at: float,
                    is_failure: bool = True) -> None:
        now = time.time()
        await self.write_outcome(task, plans.retry_call(self._message(task), error, retry_at, now, is_failure))

    async def archive(self, task: DequeuedTask, error: str) -> None:
        await self.write_outcome(task, self.plan_failure(task, error, skip_retry=True)[0])

    async def fail(self, task: DequeuedTask, error: str, *, skip_retry: bool = False,
                   retry_in: float | None = None) -> str:
        """Retry or archive as asynq decides; returns the resulting state."""
        call, state = self.plan_failure(task, error, skip_retry=skip_retry, retry_in=retry_in)
        await self.write_outcome(task, call)
        return state

    def plan_requeue(self, task: DequeuedTask) -> tuple[ScriptCall, str]:
        """Back to pending without counting a retry."""
        return plans.requeue_call(task.queue, task.id), "pending"

    async def requeue(self, task: DequeuedTask) -> None:
        await self.write_outcome(task, self.plan_requeue(task)[0])

    async def extend_leases(self, queue: str, task_ids: Sequence[str],
                            lease_seconds: int = ASYNQ_LEASE_SECONDS) -> int:
        """asynq's ExtendLease: ``ZADD lease XX`` (renews only IDs still in the lease set).
        Returns the new expiry. The lease it writes is not fenced (the task hash's
        fenced_lease no longer matches), so it is recovered on asynq's rule; the agent's
        LeaseKeeper renews through renew_leases.lua instead."""
        expiry = int(time.time()) + lease_seconds
        if task_ids:
            await self.redis.zadd(keys.lease(queue), dict.fromkeys(task_ids, expiry), xx=True)
        return expiry

    # -- background maintenance ---------------------------------------------------------

    async def forward(self, queue: str, batch: int = 100) -> int:
        """Move due scheduled then retry tasks to pending; returns how many moved."""
        moved = 0
        for source in (keys.scheduled(queue), keys.retry(queue)):
            while True:
                n = int(await self._run(plans.forward_call(queue, source, time.time(), batch)))
                moved += n
                if n < batch:
                    break
        return moved

    async def delete_expired_completed(self, queue: str, batch: int = 100) -> int:
        deleted = 0
        while True:
            n = int(await self.scripts.delete_expired_completed(
                keys=[keys.completed(queue)], args=[int(time.time()), keys.task_prefix(queue), batch]))
            deleted += n
            if n < batch:
                return deleted

    async def _evalsha_many(self, calls: Sequence[tuple[object, list, list]]) -> list:
        """Run (script, keys, args) calls in one pipelined round trip; results or exceptions in
        order. Plain EVALSHA, loading a script only on NOSCRIPT: a pipeline handed Script
        objects asks SCRIPT EXISTS first, one more round trip every time."""
        async def run(batch: Sequence[tuple[object, list, list]]) -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                for script, call_keys, args in batch:
                    pipe.evalsha(script.sha, len(call_keys), *call_keys, *args)
                return await pipe.execute(raise_on_error=False)

        results = await run(calls)
        redo = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if redo:
            for script in {id(calls[i][0]): calls[i][0] for i in redo}.values():
                await self.redis.script_load(script.script)
            for i, result in zip(redo, await run([calls[i] for i in redo]), strict=True):
                results[i] = result
        return results

    def _slot_chunks(self, queues: Sequence[str]) -> list[list[str]]:
        """Queues grouped for multi-queue scripts: every key of a call must share one hash
        slot on a Cluster (a queue's keys share its ``{queue}`` tag); a standalone Redis takes
        any queues together. At most SCAN_CHUNK queues per call."""
        groups: dict[int, list[str]] = {}
        keyslot = getattr(self.redis, "keyslot", None)
        for queue in queues:
            groups.setdefault(keyslot(keys.lease(queue)) if keyslot else 0, []).append(queue)
        return [group[i:i + SCAN_CHUNK] for group in groups.values()
                for i in range(0, len(group), SCAN_CHUNK)]

    async def list_lease_expired(self, queues: Sequence[str]) -> list[ExpiredLease]:
        """The leases due for recovery in ``queues``, judged by Redis's clock: our (fenced)
        leases FENCED_RECOVERY_SKEW s after they expired, any other lease asynq's 30 s after.
        One pipelined round trip; one call per SCAN_CHUNK queues (per hash slot)."""
        chunks = self._slot_chunks(queues)
        if not chunks:
            return []
        replies = await self._evalsha_many([
            (self.scripts.list_lease_expired, [keys.lease(q) for q in chunk],
             [FENCED_RECOVERY_SKEW, ASYNQ_RECOVERY_SKEW, SCAN_LIMIT])
            for chunk in chunks])
        out: list[ExpiredLease] = []
        for chunk, flat in zip(chunks, replies, strict=True):
            if isinstance(flat, Exception):
                raise flat
            for i in range(0, len(flat), 5):
                out.append(ExpiredLease(flat[i + 1].decode(), chunk[int(flat[i]) - 1], flat[i + 4],
                                        flat[i + 2], bool(flat[i + 3])))
        return out

    def _recovery_call(self, expired: ExpiredLease) -> tuple[ScriptCall, str, str]:
        """Retry or archive, as asynq's recoverer does; returns the call, the state it leaves
        and, for a malformed message (archived), the reason recorded. Retried at once, back at the head of
        pending, when the lease was ours (fenced: its holder can no longer write; it died or
        stalled, and the task has waited for the recovery already), unless its previous
        failure was a lease expiry too (a task that may be killing its agents gets asynq's
        backoff); asynq's backoff for any other lease."""
        message, error = check_message(expired.raw, expired.id, expired.queue)
        reason = LEASE_EXPIRED_ERROR if message else f"{LEASE_EXPIRED_ERROR}; {error}"
        now = time.time()
        if message is None:
            stand_in = stand_in_message(expired.raw, expired.id, expired.queue)
            return plans.archive_call(stand_in, reason, now, expired.raw), "archived", reason
        if plans.failure_decision(message, False) == "archive":
            return plans.archive_call(message, reason, now), "archived", ""
        if expired.fenced and message.error_msg != LEASE_EXPIRED_ERROR:
            return plans.retry_now_call(message, reason, now), "retry", ""
        delay = plans.default_retry_delay(message.retried)
        return plans.retry_call(message, reason, now + delay, now, True), "retry", ""

    async def recover_expired_many(self, queues: Sequence[str]) -> dict[str, dict[str, int]]:
        """Retry or archive every task of ``queues`` whose lease is due for recovery
        (``list_lease_expired``). Each write goes through only if the lease is still the one
        listed (recover_claim.lua): a lease renewed meanwhile, or a task finished or
        recovered by someone else, is left alone. Returns counts per queue, for the queues
        that had any."""
        counts: dict[str, dict[str, int]] = {}
        planned: list[tuple[ExpiredLease, ScriptCall, str, str]] = []
        for expired in await self.list_lease_expired(queues):
            if expired.raw is None:
                dropped = await self.drop_orphan(expired.queue, expired.id)
                counts.setdefault(expired.queue, {"retry": 0, "archived": 0, "orphans": 0})["orphans"] += dropped
                continue
            planned.append((expired, *self._recovery_call(expired)))
        if planned:
            results = await self._evalsha_many([
                (self._claimed[call.script], call.keys, [expired.score, *call.args])
                for expired, call, _, _ in planned])
            for (expired, _call, state, malformed), result in zip(planned, results, strict=True):
                if isinstance(result, ResponseError) and (
                        "NOT FOUND" in str(result) or "LEASE RENEWED" in str(result)):
                    continue  # finished, recovered elsewhere, or renewed by its live holder
                if isinstance(result, Exception):
                    raise result
                counts.setdefault(expired.queue, {"retry": 0, "archived": 0, "orphans": 0})[state] += 1
                if malformed:
                    _warn_archived_malformed(expired.queue, expired.id, malformed)
        return counts

    async def recover_expired(self, queue: str) -> dict[str, int]:
        """``recover_expired_many`` for one queue: {"retry": n, "archived": n, "orphans": n}."""
        return (await self.recover_expired_many([queue])).get(queue, {"retry": 0, "archived": 0, "orphans": 0})

    async def drop_orphan(self, queue: str, task_id: str) -> int:
        """Remove an ID that has no task hash from active and lease (asynq leaves it forever)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(keys.active(queue), 0, task_id)
            pipe.zrem(keys.lease(queue), task_id)
            removed, _ = await pipe.execute()
        return 1 if removed else 0

    async def lease_orphaned_active_many(self, queues: Sequence[str]) -> dict[str, list[str]]:
        """Give an expired lease to IDs in ``active`` with none (left by a writer that died
        between commands, e.g. runqy's non-atomic dequeue), so recovery picks them up (on
        asynq's rule: the lease is not fenced and is an hour old). One pipelined round trip,
        one call per SCAN_CHUNK queues. Returns the IDs fixed, per queue that had any."""
        chunks = self._slot_chunks(queues)
        if not chunks:
            return {}
        expired_score = int(time.time()) - 3600
        replies = await self._evalsha_many([
            (self.scripts.reconcile, [k for q in chunk for k in (keys.active(q), keys.lease(q))],
             [expired_score])
            for chunk in chunks])
        fixed: dict[str, list[str]] = {}
        for chunk, flat in zip(chunks, replies, strict=True):
            if isinstance(flat, Exception):
                raise flat
            for i in range(0, len(flat), 2):
                fixed.setdefault(chunk[int(flat[i]) - 1], []).append(flat[i + 1].decode())
        return fixed

    async def lease_orphaned_active(self, queue: str) -> list[str]:
        """``lease_orphaned_active_many`` for one queue."""
        return (await self.lease_orphaned_active_many([queue])).get(queue, [])

    # -- queues and heartbeat -----------------------------------------------------------

    async def paused_queues(self, queues: Sequence[str]) -> set[str]:
        if not queues:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.exists(keys.paused(q))
            flags = await pipe.execute()
        return {q for q, flag in zip(queues, flags, strict=True) if flag}

    async def pause(self, queue: str) -> bool:
        return bool(await self.redis.setnx(keys.paused(queue), int(time.time())))

    async def unpause(self, queue: str) -> bool:
        return bool(await self.redis.delete(keys.paused(queue)))

    async def write_server_state(self, info: ServerInfo, workers: Sequence[WorkerInfo],
                                 ttl: int = 10) -> None:
        server_key = keys.server_info(info.host, info.pid, info.server_id)
        workers_key = keys.workers(info.host, info.pid, info.server_id)
        expiry = int(time.time()) + ttl
        args: list = [ttl, encode(info)]
        for worker in workers:
            args.extend((worker.task_id, encode(worker)))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.ALL_SERVERS, {server_key: expiry})
            pipe.zadd(keys.ALL_WORKERS, {workers_key: expiry})
            await self.scripts.write_server_state(keys=[server_key, workers_key], args=args, client=pipe)
            await pipe.execute()

    async def clear_server_state(self, host: str, pid: int, server_id: str) -> None:
        server_key = keys.server_info(host, pid, server_id)
        workers_key = keys.workers(host, pid, server_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.ALL_SERVERS, server_key)
            pipe.zrem(keys.ALL_WORKERS, workers_key)
            await self.scripts.clear_server_state(keys=[server_key, workers_key], args=[], client=pipe)
            await pipe.execute()

    # -- reads --------------------------------------------------------------------------

    async def get_task(self, queue: str, task_id: str) -> TaskInfo:
        """The task read back from its hash; ``TaskNotFoundError`` if it does not exist."""
        fields = await self.redis.hgetall(keys.task_key(queue, task_id))
        if not fields:
            raise TaskNotFoundError(queue, task_id)
        state = fields.get(b"state", b"").decode()
        score = None
        if state in ("scheduled", "retry"):
            score = await self.redis.zscore(f"{keys.queue_prefix(queue)}{state}", task_id)
        return task_info_from_hash(queue, task_id, fields, score)

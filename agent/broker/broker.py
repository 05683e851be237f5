"""The async Broker: every Redis read and write the agent makes, in asynq's format."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent.broker import keys, plans
from agent.broker.batch import ScriptBatcher, merged_statuses
from agent.broker.errors import (
    DuplicateTaskError,
    LeaseLostError,
    TaskIDConflictError,
    TaskNotFoundError,
)
from agent.broker.messages import (
    MessageDecodeError,
    ServerInfo,
    TaskMessage,
    WorkerInfo,
    decode_task_message,
    encode,
)
from agent.broker.options import EnqueueOptions, EnqueueResult
from agent.broker.plans import LEASE_EXPIRED_ERROR, LEASE_SECONDS, ScriptCall
from agent.broker.scripts import Scripts, fenced
from agent.broker.taskinfo import TaskInfo, task_info_from_hash


@dataclass(slots=True)
class DequeuedTask:
    """A task we hold. ``message`` is None when ``raw`` is not a valid TaskMessage."""

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
        """A minimal message for writing the fate of an undecodable task."""
        return TaskMessage(id=self.id, queue=self.queue)


@dataclass(frozen=True)
class ExpiredLease:
    id: str
    queue: str
    raw: bytes | None


#: Seconds past a writer's lease deadline that Redis still accepts its outcome (clock skew
#: between agents and Redis); well under the 30 s after which other agents recover a task.
LEASE_FENCE_GRACE = 10


def _decode_found(raw: bytes, task_id: str, queue: str) -> tuple[TaskMessage | None, str]:
    """Decode the message of a task found under ``queue``/``task_id``.

    A message that names another ID or queue is treated as undecodable: the outcome scripts
    address keys by the message's queue and ID, so trusting it would leave the task active
    forever (every write NOT FOUND, recovery too). It is archived with the reason instead.
    """
    try:
        message = decode_task_message(raw)
    except MessageDecodeError as exc:
        return None, str(exc)
    if message.id != task_id or message.queue != queue:
        return None, (f"invalid asynq TaskMessage: it names task {message.id!r} of queue "
                      f"{message.queue!r} but was found as task {task_id!r} of queue {queue!r}")
    return message, ""


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
        self._writes: set[asyncio.Future] = set()

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
        call = plans.dequeue_call(queue, now, count, lease_seconds)
        flat = await self._run(call)
        orphans: list[str] = []
        tasks = self._tasks_from_reply(queue, flat, now, int(now) + lease_seconds, orphans)
        return tasks, orphans

    async def dequeue_counts(self, counts: dict[str, int], lease_seconds: int = LEASE_SECONDS
                             ) -> tuple[list[DequeuedTask], list[str], dict[str, int]]:
        """Take up to ``counts[queue]`` tasks from each queue, all in one round trip.

        Returns (tasks, orphan IDs dropped, how many each queue yielded)."""
        now = time.time()
        queues = [q for q, n in counts.items() if n > 0]
        calls = [plans.dequeue_call(q, now, counts[q], lease_seconds) for q in queues]
        replies = await self._batcher.execute(calls) if self._batcher else [
            await self._run(c) for c in calls]
        expiry = int(now) + lease_seconds
        tasks: list[DequeuedTask] = []
        orphans: list[str] = []
        taken: dict[str, int] = {}
        for queue, flat in zip(queues, replies, strict=True):
            if isinstance(flat, Exception):
                raise flat
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
            message, error = _decode_found(raw, task_id, queue)
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
        # Fenced: Redis refuses the write if it arrives after our lease (plus a grace for clock
        # skew) -- a command delayed by a network stall must not finish a task that another
        # agent recovered meanwhile (recovery starts 30 s after the lease, see recover_expired).
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

    def write_outcome_soon(self, task: DequeuedTask, call: ScriptCall,
                           on_written: Callable[[BaseException | None], None]) -> None:
        """``write_outcome`` for the hot path: the write joins this loop turn's pipeline and
        ``on_written`` gets None, or the error (``LeaseLostError``, ``TaskNotFoundError``, a
        Redis error), once it is done. Without a batcher the write runs as its own task."""
        if not task.lease_valid():
            on_written(LeaseLostError(task.queue, task.id))
            return

        def written(result) -> None:
            on_written(self._outcome_error(task, result) if isinstance(result, BaseException) else None)

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
                            lease_seconds: int = LEASE_SECONDS) -> int:
        """``ZADD lease XX``: renews only IDs still in the lease set. Returns the new expiry."""
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

    async def list_lease_expired(self, queue: str, cutoff: float) -> list[ExpiredLease]:
        flat = await self.scripts.list_lease_expired(
            keys=[keys.lease(queue)], args=[int(cutoff), keys.task_prefix(queue)])
        return [ExpiredLease(flat[i].decode(), queue, flat[i + 1]) for i in range(0, len(flat), 2)]

    async def recover_expired(self, queue: str, skew: int = LEASE_SECONDS) -> dict[str, int]:
        """Retry or archive every task whose lease expired ``skew`` seconds ago or more."""
        counts = {"retry": 0, "archived": 0, "orphans": 0}
        for expired in await self.list_lease_expired(queue, time.time() - skew):
            if expired.raw is None:
                counts["orphans"] += await self.drop_orphan(queue, expired.id)
                continue
            message, error = _decode_found(expired.raw, expired.id, queue)
            # The lease is gone by definition; write as its new owner for this one step.
            task = DequeuedTask(expired.id, queue, expired.raw, message, int(time.time()) + 5, error)
            try:
                state = await self.fail(task, LEASE_EXPIRED_ERROR if message else f"{LEASE_EXPIRED_ERROR}; {error}")
            except TaskNotFoundError:
                continue  # finished or recovered by someone else meanwhile
            counts[state] += 1
        return counts

    async def drop_orphan(self, queue: str, task_id: str) -> int:
        """Remove an ID that has no task hash from active and lease (asynq leaves it forever)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(keys.active(queue), 0, task_id)
            pipe.zrem(keys.lease(queue), task_id)
            removed, _ = await pipe.execute()
        return 1 if removed else 0

    async def lease_orphaned_active(self, queue: str) -> list[str]:
        """Give an expired lease to IDs in ``active`` with none (left by a writer that died
        between commands, e.g. runqy's non-atomic dequeue), so recovery picks them up."""
        ids = await self.scripts.reconcile(keys=[keys.active(queue), keys.lease(queue)],
                                           args=[int(time.time()) - 3600])
        return [i.decode() for i in ids]

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

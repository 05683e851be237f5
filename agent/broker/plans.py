"""Pure builders of script calls (keys + args) shared by the async Broker and the sync client.

Each function decides *what* to write; the caller decides *how* (sync, async, pipelined).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from agent.broker import keys
from agent.broker.messages import TaskMessage, encode, utf8_safe
from agent.broker.options import EnqueueOptions, EnqueueResult, build_message

MAX_INT64 = str(2**63 - 1)
STATS_TTL = 90 * 24 * 3600
ARCHIVE_MAX_SIZE = 10_000
ARCHIVE_MAX_AGE = 90 * 24 * 3600
LEASE_EXPIRED_ERROR = "asynq: task lease expired"

# -- leases and recovery (docs/reliability.md, "Fast recovery") ----------------------------
#
# Our leases are short and fenced; leases written by anyone else keep asynq's rules. Every
# time below that decides safety is judged by Redis's clock (TIME inside the scripts), never
# by an agent's, so clock differences between agents cannot let a lease's holder and a
# recoverer both act on one task.

#: The lease we write (dequeue and every renewal): now + LEASE_SECONDS, unix s.
LEASE_SECONDS = 10
#: The LeaseKeeper renews our leases this often, so a live agent's lease is always at least
#: LEASE_SECONDS - LEASE_RENEW_INTERVAL ahead.
LEASE_RENEW_INTERVAL = 2.0
#: Seconds past a writer's lease deadline (by Redis's clock) that the lease fence still lets
#: its outcome through, and that a renewal is still accepted. Smaller than
#: FENCED_RECOVERY_SKEW: a task is never both writable by its holder and recoverable.
LEASE_FENCE_GRACE = 1
#: A fenced lease (one we wrote: the task hash's FENCED_LEASE_FIELD equals the lease score)
#: is recovered once Redis's clock is this many seconds past it.
FENCED_RECOVERY_SKEW = 2
#: Any other lease (a Go asynq server's, an older agent's, one the reconciler gave) keeps
#: asynq's rule: recovered 30 s after it expired.
ASYNQ_RECOVERY_SKEW = 30
#: asynq's lease length, for renewals made on asynq's terms (``Broker.extend_leases``).
ASYNQ_LEASE_SECONDS = 30
#: The recoverer looks this often...
RECOVERY_INTERVAL = 1.0
#: ...at up to this many queues per tick (one pipelined round trip, one script call per 250
#: queues, about 0.4 us of Redis time per queue), so every queue is looked at least every
#: ceil(queues / RECOVERY_QUEUES_PER_TICK) seconds.
RECOVERY_QUEUES_PER_TICK = 2000
#: Task hash field naming the lease score whose holder writes through the lease fence. Set by
#: our dequeue and renewals; removed when the task leaves active through our scripts. Go
#: reads task hashes only by named fields (HMGET msg/state/result/...), so it never sees it.
FENCED_LEASE_FIELD = "fenced_lease"


@dataclass(frozen=True)
class ScriptCall:
    script: str  # name of a script in agent/broker/lua
    keys: list[str]
    args: list
    fence: int | None = None  # lease deadline (unix s): Redis refuses the write after it (lease_fence.lua)


@dataclass(frozen=True)
class EnqueuePlan:
    call: ScriptCall
    result: EnqueueResult


def default_retry_delay(retried: int, rng: random.Random | None = None) -> int:
    """asynq's (Sidekiq's) backoff in seconds: n^4 + 15 + rand(30) * (n + 1)."""
    n = max(0, retried)
    return n**4 + 15 + (rng or random).randrange(30) * (n + 1)


def plan_enqueue(task_type: str, payload: bytes | None, opts: EnqueueOptions,
                 now: float | None = None) -> EnqueuePlan:
    """Route like asynq.Client: future process time -> schedule, group -> aggregate, else pending."""
    now = time.time() if now is None else now
    msg = build_message(task_type, payload, opts)
    queue, task_id, data = msg.queue, msg.id, encode(msg)
    tkey = keys.task_key(queue, task_id)
    process_at = opts.process_time(now)
    unique_ttl = None
    if opts.unique_ttl is not None:
        ttl = opts.unique_ttl
        unique_ttl = int(ttl.total_seconds() if hasattr(ttl, "total_seconds") else ttl)
    if process_at > now:
        score = int(process_at)
        if unique_ttl is not None:
            lock_ttl = max(1, int(process_at + unique_ttl - now))
            call = ScriptCall("schedule_unique", [msg.unique_key, tkey, keys.scheduled(queue)],
                              [task_id, lock_ttl, score, data])
        else:
            call = ScriptCall("schedule", [tkey, keys.scheduled(queue)], [data, score, task_id])
        return EnqueuePlan(call, EnqueueResult(task_id, queue, "scheduled", score, msg))
    if opts.group:
        call_keys = [tkey, keys.group(queue, opts.group), keys.groups(queue)]
        call_args = [data, task_id, int(now), opts.group]
        if unique_ttl is not None:
            call_keys.append(msg.unique_key)
            call_args.append(unique_ttl)
        return EnqueuePlan(ScriptCall("add_to_group", call_keys, call_args),
                           EnqueueResult(task_id, queue, "aggregating", int(now), msg))
    now_ns = int(now * 1e9)
    if unique_ttl is not None:
        call = ScriptCall("enqueue_unique", [msg.unique_key, tkey, keys.pending(queue)],
                          [task_id, unique_ttl, data, now_ns])
    else:
        call = ScriptCall("enqueue", [tkey, keys.pending(queue)], [data, task_id, now_ns])
    return EnqueuePlan(call, EnqueueResult(task_id, queue, "pending", int(now), msg))


def dequeue_call(queue: str, now: float, count: int, lease_seconds: int = LEASE_SECONDS) -> ScriptCall:
    return ScriptCall(
        "dequeue",
        [keys.pending(queue), keys.paused(queue), keys.active(queue), keys.lease(queue)],
        [int(now) + lease_seconds, keys.task_prefix(queue), count],
    )


def _stats_expiry(now: float) -> int:
    return int(now) + STATS_TTL


def done_call(msg: TaskMessage, now: float) -> ScriptCall:
    q = msg.queue
    call_keys = [keys.active(q), keys.lease(q), keys.task_key(q, msg.id),
                 keys.processed_day(q, now), keys.processed_total(q)]
    if msg.unique_key:
        call_keys.append(msg.unique_key)
    return ScriptCall("done", call_keys, [msg.id, _stats_expiry(now), MAX_INT64])


def done_many_call(queue: str, tasks: list[tuple[str | bytes, str]], now: float) -> ScriptCall:
    """``done`` for many tasks of one queue in one call; ``tasks``: (task id, unique key or "")."""
    call_keys = [keys.active(queue), keys.lease(queue), keys.processed_day(queue, now),
                 keys.processed_total(queue)]
    return ScriptCall("done_many", call_keys, done_many_args(_stats_expiry(now), keys.task_prefix(queue), tasks))


def done_many_args(stats_expiry: int, prefix: str, tasks: list[tuple[str | bytes, str]]) -> list:
    """done_many.lua's arguments: the IDs, then (position, lock) for the tasks with a unique
    lock, so the common task costs one argument to pack and send."""
    args: list = [stats_expiry, MAX_INT64, prefix, len(tasks)]
    args += [task_id for task_id, _ in tasks]
    for position, (_, lock) in enumerate(tasks, 1):
        if lock:
            args += (position, lock)
    return args


def mark_complete_call(msg: TaskMessage, now: float, result: bytes | None = None) -> ScriptCall:
    q = msg.queue
    completed = TaskMessage()
    completed.CopyFrom(msg)
    completed.completed_at = int(now)
    call_keys = [keys.active(q), keys.lease(q), keys.completed(q), keys.task_key(q, msg.id),
                 keys.processed_day(q, now), keys.processed_total(q)]
    if msg.unique_key:
        call_keys.append(msg.unique_key)
    call_args = [msg.id, _stats_expiry(now), int(now) + msg.retention, encode(completed), MAX_INT64]
    if result is not None:
        call_args.append(result)
    return ScriptCall("mark_complete", call_keys, call_args)


def _failed_message(msg: TaskMessage, error: str, now: float, count_retry: bool) -> bytes:
    failed = TaskMessage()
    failed.CopyFrom(msg)
    if count_retry:
        failed.retried += 1
    failed.error_msg = utf8_safe(error)
    failed.last_failed_at = int(now)
    return encode(failed)


def _failure_keys(msg: TaskMessage, container: str, now: float) -> list[str]:
    q = msg.queue
    return [keys.task_key(q, msg.id), keys.active(q), keys.lease(q), container,
            keys.processed_day(q, now), keys.failed_day(q, now),
            keys.processed_total(q), keys.failed_total(q)]


def retry_call(msg: TaskMessage, error: str, retry_at: float, now: float,
               is_failure: bool = True) -> ScriptCall:
    return ScriptCall(
        "retry",
        _failure_keys(msg, keys.retry(msg.queue), now),
        [msg.id, _failed_message(msg, error, now, is_failure), int(retry_at),
         _stats_expiry(now), 1 if is_failure else 0, MAX_INT64],
    )


def retry_now_call(msg: TaskMessage, error: str, now: float) -> ScriptCall:
    """A failure retried at once, straight back at the head of pending (retry_now.lua): the
    recovery of a task whose fenced lease expired."""
    return ScriptCall(
        "retry_now",
        [keys.task_key(msg.queue, msg.id), keys.active(msg.queue), keys.lease(msg.queue),
         keys.pending(msg.queue), keys.processed_day(msg.queue, now), keys.failed_day(msg.queue, now),
         keys.processed_total(msg.queue), keys.failed_total(msg.queue)],
        [msg.id, _failed_message(msg, error, now, True), int(now * 1e9), _stats_expiry(now), MAX_INT64],
    )


def archive_call(msg: TaskMessage, error: str, now: float, raw: bytes | None = None) -> ScriptCall:
    """Archive ``msg`` with ``error``. ``raw``: the original bytes of a malformed message that
    ``msg`` stands in for, kept in the hash field ``malformed.RAW_MSG_FIELD``."""
    args = [msg.id, _failed_message(msg, error, now, count_retry=False), int(now),
            int(now) - ARCHIVE_MAX_AGE, ARCHIVE_MAX_SIZE, _stats_expiry(now), MAX_INT64,
            keys.task_prefix(msg.queue)]
    if raw is not None:
        args.append(raw)
    return ScriptCall("archive", _failure_keys(msg, keys.archived(msg.queue), now), args)


def requeue_call(queue: str, task_id: str) -> ScriptCall:
    return ScriptCall(
        "requeue",
        [keys.active(queue), keys.lease(queue), keys.pending(queue), keys.task_key(queue, task_id)],
        [task_id],
    )


def forward_call(queue: str, source_key: str, now: float, batch: int = 100) -> ScriptCall:
    return ScriptCall(
        "forward",
        [source_key, keys.pending(queue)],
        [int(now), keys.task_prefix(queue), int(now * 1e9), keys.group_prefix(queue), batch],
    )


def failure_decision(msg: TaskMessage, skip_retry: bool) -> str:
    """'archive' when retries are exhausted or the handler asked to skip retries, else 'retry'."""
    return "archive" if skip_retry or msg.retried >= msg.retry else "retry"


def processing_deadline(msg: TaskMessage, now: float) -> int:
    """asynq's computeDeadline: min(now + timeout, deadline); 30 min when neither is set."""
    if msg.timeout > 0 and msg.deadline > 0:
        return min(int(now) + msg.timeout, msg.deadline)
    if msg.timeout > 0:
        return int(now) + msg.timeout
    if msg.deadline > 0:
        return msg.deadline
    return int(now) + 1800

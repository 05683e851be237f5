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
LEASE_SECONDS = 30
LEASE_EXPIRED_ERROR = "asynq: task lease expired"


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


def archive_call(msg: TaskMessage, error: str, now: float, raw: bytes | None = None) -> ScriptCall:
    """Archive; ``raw`` keeps an undecodable original msg untouched."""
    data = raw if raw is not None else _failed_message(msg, error, now, count_retry=False)
    return ScriptCall(
        "archive",
        _failure_keys(msg, keys.archived(msg.queue), now),
        [msg.id, data, int(now), int(now) - ARCHIVE_MAX_AGE, ARCHIVE_MAX_SIZE,
         _stats_expiry(now), MAX_INT64, keys.task_prefix(msg.queue)],
    )


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

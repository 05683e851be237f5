"""A synchronous Inspector for any asynq-format Redis (Go servers included).

Every operation leaves the same Redis state as the matching method of Go's
``asynq.Inspector`` (wire spec §4.2), through this package's own Lua scripts
(``agent/inspect/lua``). Reads never fail on bad data written by a peer: an undecodable
``msg`` is returned as a task with ``decode_error`` set, where asynq would skip it.

    from agent.inspect import Inspector
    inspector = Inspector.from_url("redis://127.0.0.1:6379/0")
    for name in inspector.queues():
        print(inspector.queue_stats(name).pending)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import redis
from google.protobuf.message import DecodeError

from agent.broker import keys
from agent.broker.errors import BrokerError, QueueNotFoundError, TaskNotFoundError
from agent.broker.messages import (
    MessageDecodeError,
    ServerInfo,
    WorkerInfo,
    decode_task_message,
)
from agent.broker.plans import ARCHIVE_MAX_AGE, ARCHIVE_MAX_SIZE
from agent.broker.progress import PROGRESS_FIELD, decode_progress

STATES = ("pending", "active", "scheduled", "retry", "archived", "completed", "aggregating")
RUN_ALL_STATES = ("scheduled", "retry", "archived", "aggregating")
ARCHIVE_ALL_STATES = ("pending", "scheduled", "retry", "aggregating")
DELETE_ALL_STATES = ("pending", "scheduled", "retry", "archived", "completed", "aggregating")
DEFAULT_PAGE_SIZE = 30
MEMORY_SAMPLE_SIZE = 20
MEMORY_GROUP_SAMPLE = 5
GO_ZERO_TIME = -62135596800  # Go's time.Time{} as Unix seconds

SCRIPT_NAMES = (
    "queue_stats",
    "memory_usage",
    "get_task",
    "list_list",
    "list_zset",
    "list_heartbeat_keys",
    "run_task",
    "archive_task",
    "delete_task",
    "run_all",
    "archive_all",
    "delete_all",
)


class InspectorError(BrokerError):
    """An operation asynq refuses (wrong state, bad argument); the message says why."""


@cache
def _source(name: str) -> str:
    return resources.files("agent.inspect").joinpath("lua", f"{name}.lua").read_text()


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _int(value: Any, default: int = 0) -> int:
    """An integer from a Redis reply; ``default`` for nil or garbage written by a peer."""
    if value is None or value is False:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))  # a float score written by a non-conforming client
        except (TypeError, ValueError):
            return default


def _timestamp(ts) -> float | None:
    """A google.protobuf.Timestamp as Unix seconds; None when unset or Go's zero time."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0) or ts.seconds <= GO_ZERO_TIME:
        return None
    return ts.seconds + ts.nanos / 1e9


def _bytes_json(data: bytes | None) -> dict[str, Any] | None:
    """bytes for JSON output: UTF-8 text when it decodes, else hex."""
    if data is None:
        return None
    try:
        return {"encoding": "utf-8", "data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "hex", "data": data.hex()}


@dataclass(frozen=True)
class QueueStats:
    """One queue's counts, as asynq's ``Inspector.GetQueueInfo``. Latency in seconds."""

    queue: str
    paused: bool
    size: int
    pending: int
    active: int
    scheduled: int
    retry: int
    archived: int
    completed: int
    aggregating: int
    groups: int
    processed: int  # today (UTC), successes and failures
    failed: int  # today (UTC)
    processed_total: int
    failed_total: int
    latency: float
    memory_usage: int | None
    timestamp: float
    date: str  # the UTC day the daily counters belong to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DailyStats:
    queue: str
    date: str  # YYYY-MM-DD, UTC
    processed: int
    failed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskDetails:
    """A task as the Inspector sees it. Times are Unix seconds, 0 when not applicable.

    ``decode_error`` is set when the task's ``msg`` is missing or not a valid TaskMessage
    (then only ``id``, ``queue``, ``state`` and the Redis-side fields are known).
    ``next_process_at`` follows asynq: now for pending, the score for scheduled and retry.
    ``score`` is the raw score in the task's ZSET (archived: when it was archived;
    completed: when it expires), ``lease_expiry`` the lease of an active task, and
    ``is_orphaned`` tells that lease has expired (its worker stopped renewing it).
    """

    id: str
    queue: str
    state: str
    type: str = ""
    payload: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    max_retry: int = 0
    retried: int = 0
    last_error: str = ""
    last_failed_at: int = 0
    timeout: int = 0
    deadline: int = 0
    group: str = ""
    unique_key: str = ""
    retention: int = 0
    completed_at: int = 0
    next_process_at: int = 0
    score: int | None = None
    lease_expiry: int | None = None
    is_orphaned: bool = False
    pending_since_ns: int | None = None
    result: bytes | None = None
    decode_error: str = ""
    #: the handler's last progress report (``rundown_progress``): progress, message, updated_at
    progress: dict[str, Any] | None = None

    @property
    def decodable(self) -> bool:
        return not self.decode_error

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["payload"] = _bytes_json(self.payload)
        out["result"] = _bytes_json(self.result)
        return out


@dataclass(frozen=True)
class TaskPage:
    queue: str
    state: str
    page: int
    size: int
    total: int  # tasks in that state (in that group, for aggregating)
    tasks: list[TaskDetails]
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "state": self.state, "group": self.group or None,
                "page": self.page, "size": self.size, "total": self.total,
                "tasks": [t.to_dict() for t in self.tasks]}


@dataclass(frozen=True)
class WorkerDetails:
    """One in-flight task of a server (asynq ``WorkerInfo``). Times are Unix seconds."""

    task_id: str
    task_type: str
    task_payload: bytes
    queue: str
    started: float | None
    deadline: float | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["task_payload"] = _bytes_json(self.task_payload)
        return out


@dataclass(frozen=True)
class ServerDetails:
    """A live server (asynq ``ServerInfo``) with the workers joined on ``server_id``."""

    id: str
    host: str
    pid: int
    concurrency: int
    queues: dict[str, int]
    strict_priority: bool
    status: str
    started: float | None
    active_worker_count: int
    active_workers: list[WorkerDetails] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["active_workers"] = [w.to_dict() for w in self.active_workers]
        return out


def task_from_fields(queue: str, task_id: str, state: str, raw_msg: bytes | None, *,
                     result: bytes | None = None, score: Any = None, lease: Any = None,
                     pending_since: Any = None, group: str = "", now: float | None = None,
                     progress: Any = None) -> TaskDetails:
    """Build TaskDetails from what the scripts return; never raises on bad data."""
    now = time.time() if now is None else now
    score_i = None if score is None or score is False else _int(score)
    lease_i = None if lease is None or lease is False else _int(lease)
    since = None if pending_since is None or pending_since is False else _int(pending_since)
    next_at = 0
    if state == "pending":
        next_at = int(now)
    elif state in ("scheduled", "retry") and score_i is not None:
        next_at = score_i
    common = dict(id=task_id, queue=queue, state=state, next_process_at=next_at, score=score_i,
                  lease_expiry=lease_i, is_orphaned=lease_i is not None and lease_i <= now,
                  pending_since_ns=since, result=result if result not in (None, False) else None,
                  progress=decode_progress(progress if isinstance(progress, bytes) else None))
    if raw_msg is None or raw_msg is False:
        return TaskDetails(**common, group=group, decode_error="the task hash has no msg field")
    try:
        msg = decode_task_message(raw_msg)
    except MessageDecodeError as exc:
        return TaskDetails(**common, group=group, decode_error=str(exc))
    return TaskDetails(
        **common, type=msg.type, payload=msg.payload, headers=dict(msg.headers),
        max_retry=msg.retry, retried=msg.retried, last_error=msg.error_msg,
        last_failed_at=msg.last_failed_at, timeout=msg.timeout, deadline=msg.deadline,
        group=msg.group_key or group, unique_key=msg.unique_key, retention=msg.retention,
        completed_at=msg.completed_at,
    )


class Inspector:
    """Inspect and manage queues, tasks and servers over one ``redis.Redis`` client.

    Like Go's Inspector, every queue-scoped call first checks that the queue is listed in
    ``asynq:queues`` and raises ``QueueNotFoundError`` otherwise (pause and unpause do
    not check, as in asynq). Missing tasks raise ``TaskNotFoundError``; operations asynq
    refuses (e.g. deleting an active task) raise ``InspectorError``.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._scripts = {name: client.register_script(_source(name)) for name in SCRIPT_NAMES}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Inspector:
        kwargs.setdefault("socket_connect_timeout", 5)
        kwargs.setdefault("socket_timeout", 30)
        return cls(redis.Redis.from_url(url, **kwargs))

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, name: str, script_keys: list[str], args: list[Any]) -> Any:
        return self._scripts[name](keys=script_keys, args=args)

    # -- queues -------------------------------------------------------------------------

    def queues(self) -> list[str]:
        """Every queue name in ``asynq:queues``, sorted."""
        return sorted(_text(q) for q in self.redis.smembers(keys.ALL_QUEUES))

    def _check_queue(self, queue: str) -> None:
        if not queue or not queue.strip():
            raise InspectorError("queue name must contain a non-whitespace character")
        if not self.redis.sismember(keys.ALL_QUEUES, queue):
            raise QueueNotFoundError(queue)

    def queue_stats(self, queue: str, *, memory: bool = True, now: float | None = None) -> QueueStats:
        """Counts by state, today's and total counters, pause flag and latency.

        ``memory=True`` also estimates the queue's memory usage by sampling (asynq's
        memoryUsageCmd); it is None if the server refuses ``MEMORY USAGE``.
        """
        self._check_queue(queue)
        now = time.time() if now is None else now
        values = self._run("queue_stats", [
            keys.pending(queue), keys.active(queue), keys.scheduled(queue), keys.retry(queue),
            keys.archived(queue), keys.completed(queue), keys.processed_day(queue, now),
            keys.failed_day(queue, now), keys.processed_total(queue), keys.failed_total(queue),
            keys.paused(queue), keys.groups(queue),
        ], [keys.task_prefix(queue), keys.group_prefix(queue)])
        pending, active, scheduled, retry, archived, completed = (int(v) for v in values[:6])
        since_ns = _int(values[11])
        latency = max(0.0, now - since_ns / 1e9) if since_ns > 0 else 0.0
        aggregating = int(values[13])
        return QueueStats(
            queue=queue, paused=bool(int(values[10])),
            size=pending + active + scheduled + retry + archived + completed + aggregating,
            pending=pending, active=active, scheduled=scheduled, retry=retry, archived=archived,
            completed=completed, aggregating=aggregating, groups=int(values[12]),
            processed=_int(values[6]), failed=_int(values[7]),
            processed_total=_int(values[8]), failed_total=_int(values[9]),
            latency=latency, memory_usage=self.memory_usage(queue) if memory else None,
            timestamp=now, date=keys.utc_date(now),
        )

    def memory_usage(self, queue: str) -> int | None:
        """Estimated bytes used by the queue's tasks and containers (sampled)."""
        try:
            return int(self._run("memory_usage", [
                keys.pending(queue), keys.active(queue), keys.scheduled(queue), keys.retry(queue),
                keys.archived(queue), keys.completed(queue), keys.groups(queue),
            ], [keys.task_prefix(queue), MEMORY_SAMPLE_SIZE, MEMORY_GROUP_SAMPLE,
                keys.group_prefix(queue)]))
        except redis.ResponseError:
            return None  # MEMORY disabled (some managed Redis services)

    def history(self, queue: str, days: int = 7, *, now: float | None = None) -> list[DailyStats]:
        """Processed and failed counts for the last ``days`` UTC days, today first."""
        if days < 1:
            raise InspectorError("the number of days must be positive")
        self._check_queue(queue)
        now = time.time() if now is None else now
        stamps = [now - i * 86400 for i in range(days)]
        names = [k for t in stamps for k in (keys.processed_day(queue, t), keys.failed_day(queue, t))]
        values = self.redis.mget(names)
        return [DailyStats(queue, keys.utc_date(t), _int(values[2 * i]), _int(values[2 * i + 1]))
                for i, t in enumerate(stamps)]

    def groups(self, queue: str) -> dict[str, int]:
        """Group name -> number of aggregating tasks, for groups listed in ``groups``."""
        self._check_queue(queue)
        names = sorted(_text(g) for g in self.redis.smembers(keys.groups(queue)))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.zcard(keys.group(queue, name))
        return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))

    def pause(self, queue: str) -> None:
        """Stop servers from dequeuing from the queue (``SETNX paused``)."""
        if not queue or not queue.strip():
            raise InspectorError("queue name must contain a non-whitespace character")
        if not self.redis.setnx(keys.paused(queue), int(time.time())):
            raise InspectorError(f"queue {queue!r} is already paused")

    def unpause(self, queue: str) -> None:
        if not queue or not queue.strip():
            raise InspectorError("queue name must contain a non-whitespace character")
        if not self.redis.delete(keys.paused(queue)):
            raise InspectorError(f"queue {queue!r} is not paused")

    # -- tasks --------------------------------------------------------------------------

    def list_tasks(self, queue: str, state: str, page: int = 1, size: int = DEFAULT_PAGE_SIZE,
                   *, group: str | None = None, now: float | None = None) -> TaskPage:
        """One page (1-based) of the tasks in a state, in asynq's order: pending and active
        oldest first (the next to run first), ZSETs by ascending score. ``aggregating``
        needs ``group``."""
        if state not in STATES:
            raise InspectorError(f"unknown state {state!r}: use one of {', '.join(STATES)}")
        if state == "aggregating" and not group:
            raise InspectorError("listing aggregating tasks needs a group")
        if page < 1 or size < 1:
            raise InspectorError("page and size must be at least 1")
        self._check_queue(queue)
        now = time.time() if now is None else now
        first, last = (page - 1) * size, (page - 1) * size + size - 1
        prefix = keys.task_prefix(queue)
        tasks: list[TaskDetails] = []
        if state in ("pending", "active"):
            # New IDs are LPUSHed, so the oldest is at the right end: read from the right.
            flat = self._run("list_list", [keys.STATE_CONTAINER[state](queue), keys.lease(queue)],
                             [-last - 1, -first - 1, prefix, "lease" if state == "active" else ""])
            total = int(flat[0])
            for i in range(1, len(flat), 4):
                task_id, msg, result, extra = flat[i:i + 4]
                tasks.append(task_from_fields(
                    queue, _text(task_id), state, msg, result=result, now=now,
                    lease=extra if state == "active" else None,
                    pending_since=extra if state == "pending" else None))
            tasks.reverse()
        else:
            zset = keys.group(queue, group) if state == "aggregating" else keys.STATE_CONTAINER[state](queue)
            flat = self._run("list_zset", [zset], [first, last, prefix])
            total = int(flat[0])
            for i in range(1, len(flat), 4):
                task_id, score, msg, result = flat[i:i + 4]
                tasks.append(task_from_fields(queue, _text(task_id), state, msg, result=result,
                                              score=score, group=group or "", now=now))
        return TaskPage(queue, state, page, size, total, tasks, group or "")

    def get_task(self, queue: str, task_id: str, *, now: float | None = None) -> TaskDetails:
        """One task by ID, whatever its state."""
        self._check_queue(queue)
        now = time.time() if now is None else now
        reply = self._run("get_task", [keys.task_key(queue, task_id), keys.lease(queue)],
                          [task_id, keys.queue_prefix(queue)])
        if not reply:
            raise TaskNotFoundError(queue, task_id)
        flat, score, lease = reply
        fields = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        state = _text(fields.get("state"))
        return task_from_fields(
            queue, task_id, state, fields.get("msg"), result=fields.get("result"), score=score,
            lease=lease if state == "active" else None, pending_since=fields.get("pending_since"),
            group=_text(fields.get("group")), now=now, progress=fields.get(PROGRESS_FIELD))

    def retry_task(self, queue: str, task_id: str) -> None:
        """Move a scheduled, retry, archived, completed or aggregating task to pending
        (asynq ``RunTask``): it runs next, with its retry count and last error kept."""
        self._check_queue(queue)
        code = int(self._run("run_task", [keys.task_key(queue, task_id), keys.pending(queue),
                                          keys.groups(queue)],
                             [task_id, keys.queue_prefix(queue), keys.group_prefix(queue)]))
        if code == 0:
            raise TaskNotFoundError(queue, task_id)
        if code == -1:
            raise InspectorError(f"task {task_id!r} in queue {queue!r} is already running")
        if code == -2:
            raise InspectorError(f"task {task_id!r} in queue {queue!r} is already pending")

    def archive_task(self, queue: str, task_id: str, *, now: float | None = None) -> None:
        """Archive a task that is not running (asynq ``ArchiveTask``)."""
        self._check_queue(queue)
        now = int(time.time() if now is None else now)
        code = int(self._run("archive_task", [keys.task_key(queue, task_id), keys.archived(queue),
                                              keys.groups(queue)],
                             [task_id, now, now - ARCHIVE_MAX_AGE, ARCHIVE_MAX_SIZE,
                              keys.queue_prefix(queue), keys.group_prefix(queue)]))
        if code == 0:
            raise TaskNotFoundError(queue, task_id)
        if code == -1:
            raise InspectorError(f"task {task_id!r} in queue {queue!r} is already archived")
        if code == -2:
            raise InspectorError(f"task {task_id!r} in queue {queue!r} is active: it cannot be "
                                 "archived; cancel it instead")

    def delete_task(self, queue: str, task_id: str) -> None:
        """Delete a task that is not running and release its uniqueness lock
        (asynq ``DeleteTask``)."""
        self._check_queue(queue)
        code = int(self._run("delete_task", [keys.task_key(queue, task_id), keys.groups(queue)],
                             [task_id, keys.queue_prefix(queue), keys.group_prefix(queue)]))
        if code == 0:
            raise TaskNotFoundError(queue, task_id)
        if code == -1:
            raise InspectorError(f"task {task_id!r} in queue {queue!r} is active: it cannot be "
                                 "deleted; cancel it instead")

    def _bulk_sources(self, queue: str, state: str, allowed: tuple[str, ...], verb: str,
                      group: str | None) -> list[tuple[str, str]]:
        """(container key, group name or "") pairs a bulk operation runs over."""
        if state not in allowed:
            raise InspectorError(f"cannot {verb} all {state} tasks: state must be one of "
                                 f"{', '.join(allowed)}")
        self._check_queue(queue)
        if state != "aggregating":
            return [(keys.STATE_CONTAINER[state](queue), "")]
        names: Iterable[str] = [group] if group else sorted(
            _text(g) for g in self.redis.smembers(keys.groups(queue)))
        return [(keys.group(queue, name), name) for name in names]

    def run_all(self, queue: str, state: str, *, group: str | None = None) -> int:
        """Move every scheduled, retry, archived or aggregating task to pending. For
        aggregating, ``group`` limits it to one group (default: every group)."""
        total = 0
        for source, name in self._bulk_sources(queue, state, RUN_ALL_STATES, "run", group):
            total += int(self._run("run_all", [source, keys.pending(queue), keys.groups(queue)],
                                   [keys.task_prefix(queue), name]))
        return total

    def archive_all(self, queue: str, state: str, *, group: str | None = None,
                    now: float | None = None) -> int:
        """Archive every pending, scheduled, retry or aggregating task."""
        now = int(time.time() if now is None else now)
        total = 0
        for source, name in self._bulk_sources(queue, state, ARCHIVE_ALL_STATES, "archive", group):
            total += int(self._run("archive_all", [source, keys.archived(queue), keys.groups(queue)],
                                   [now, now - ARCHIVE_MAX_AGE, ARCHIVE_MAX_SIZE,
                                    keys.task_prefix(queue), "list" if state == "pending" else "zset",
                                    name]))
        return total

    def delete_all(self, queue: str, state: str, *, group: str | None = None) -> int:
        """Delete every task in a state (not active). Uniqueness locks are released for
        scheduled, retry, archived and completed tasks, as asynq does."""
        release = "0" if state in ("pending", "aggregating") else "1"
        total = 0
        for source, name in self._bulk_sources(queue, state, DELETE_ALL_STATES, "delete", group):
            total += int(self._run("delete_all", [source, keys.groups(queue)],
                                   [keys.task_prefix(queue), "list" if state == "pending" else "zset",
                                    release, name]))
        return total

    def cancel(self, task_id: str) -> int:
        """Ask every server to cancel the task if it runs it (``PUBLISH asynq:cancel``).
        Returns how many subscribers received the message (best effort, as asynq)."""
        if not task_id or not task_id.strip():
            raise InspectorError("task ID must not be blank")
        return int(self.redis.publish(keys.CANCEL_CHANNEL, task_id))

    # -- servers ------------------------------------------------------------------------

    def _live_keys(self, registry: str, now: float) -> list[str]:
        return [_text(k) for k in self._run("list_heartbeat_keys", [registry], [int(now)])]

    def servers(self, *, now: float | None = None) -> list[ServerDetails]:
        """Live servers with their in-flight tasks, sorted by host and pid. Expired
        registry members are pruned (as asynq's listServerKeys); keys that are missing,
        of another type, or undecodable are skipped; workers whose server is unknown
        are dropped."""
        now = time.time() if now is None else now
        server_keys = self._live_keys(keys.ALL_SERVERS, now)
        pipe = self.redis.pipeline(transaction=False)
        for key in server_keys:
            pipe.get(key)
        servers: dict[str, ServerDetails] = {}
        for raw in pipe.execute(raise_on_error=False) if server_keys else []:
            if not isinstance(raw, bytes):
                continue
            info = ServerInfo()
            try:
                info.ParseFromString(raw)
            except (DecodeError, ValueError):  # bad data written by a peer: skipped, as asynq
                continue
            servers[info.server_id] = ServerDetails(
                id=info.server_id, host=info.host, pid=info.pid, concurrency=info.concurrency,
                queues=dict(sorted(info.queues.items(), key=lambda kv: (-kv[1], kv[0]))),
                strict_priority=info.strict_priority,
                status=info.status, started=_timestamp(info.start_time),
                active_worker_count=info.active_worker_count)
        worker_keys = self._live_keys(keys.ALL_WORKERS, now)
        pipe = self.redis.pipeline(transaction=False)
        for key in worker_keys:
            pipe.hvals(key)
        for values in pipe.execute(raise_on_error=False) if worker_keys else []:
            if not isinstance(values, list):
                continue
            for raw in values:
                worker = WorkerInfo()
                try:
                    worker.ParseFromString(raw)
                except (DecodeError, ValueError):  # skipped, as asynq
                    continue
                server = servers.get(worker.server_id)
                if server is not None:
                    server.active_workers.append(WorkerDetails(
                        task_id=worker.task_id, task_type=worker.task_type,
                        task_payload=worker.task_payload, queue=worker.queue,
                        started=_timestamp(worker.start_time),
                        deadline=_timestamp(worker.deadline)))
        for server in servers.values():
            server.active_workers.sort(key=lambda w: (w.started or 0, w.task_id))
        return sorted(servers.values(), key=lambda s: (s.host, s.pid, s.id))

"""asynq key names. Every per-queue key carries the ``{queue}`` hash tag (Redis Cluster)."""

from __future__ import annotations

import hashlib
import time

ALL_QUEUES = "asynq:queues"
ALL_SERVERS = "asynq:servers"
ALL_WORKERS = "asynq:workers"
CANCEL_CHANNEL = "asynq:cancel"


def queue_prefix(queue: str) -> str:
    return f"asynq:{{{queue}}}:"


def task_prefix(queue: str) -> str:
    return f"asynq:{{{queue}}}:t:"


def task_key(queue: str, task_id: str) -> str:
    return f"asynq:{{{queue}}}:t:{task_id}"


def pending(queue: str) -> str:
    return f"asynq:{{{queue}}}:pending"


def active(queue: str) -> str:
    return f"asynq:{{{queue}}}:active"


def lease(queue: str) -> str:
    return f"asynq:{{{queue}}}:lease"


def lease_renewal(queue: str, holder: str) -> str:
    """A LeaseKeeper's renewal record for a queue (renew_leases.lua, list_lease_expired.lua)."""
    return f"rundown:{{{queue}}}:renewed:{holder}"


def scheduled(queue: str) -> str:
    return f"asynq:{{{queue}}}:scheduled"


def retry(queue: str) -> str:
    return f"asynq:{{{queue}}}:retry"


def archived(queue: str) -> str:
    return f"asynq:{{{queue}}}:archived"


def completed(queue: str) -> str:
    return f"asynq:{{{queue}}}:completed"


def paused(queue: str) -> str:
    return f"asynq:{{{queue}}}:paused"


def groups(queue: str) -> str:
    return f"asynq:{{{queue}}}:groups"


def group_prefix(queue: str) -> str:
    return f"asynq:{{{queue}}}:g:"


def group(queue: str, name: str) -> str:
    return f"asynq:{{{queue}}}:g:{name}"


def aggregation_sets(queue: str) -> str:
    return f"asynq:{{{queue}}}:aggregation_sets"


def processed_total(queue: str) -> str:
    return f"asynq:{{{queue}}}:processed"


def failed_total(queue: str) -> str:
    return f"asynq:{{{queue}}}:failed"


_DAY_SECONDS = 86_400
_date_cache: tuple[int, str] = (-1, "")


def utc_date(unix_seconds: float | None = None) -> str:
    """The UTC date of a Unix time (now by default), as asynq's daily stats keys use it."""
    global _date_cache
    day = int(time.time() if unix_seconds is None else unix_seconds) // _DAY_SECONDS
    if _date_cache[0] != day:
        _date_cache = (day, time.strftime("%Y-%m-%d", time.gmtime(day * _DAY_SECONDS)))
    return _date_cache[1]


def processed_day(queue: str, unix_seconds: float | None = None) -> str:
    return f"asynq:{{{queue}}}:processed:{utc_date(unix_seconds)}"


def failed_day(queue: str, unix_seconds: float | None = None) -> str:
    return f"asynq:{{{queue}}}:failed:{utc_date(unix_seconds)}"


def unique_key(queue: str, task_type: str, payload: bytes | None) -> str:
    """asynq's uniqueness lock key. ``None`` stands for Go's nil payload (empty suffix)."""
    digest = "" if payload is None else hashlib.md5(payload, usedforsecurity=False).hexdigest()
    return f"asynq:{{{queue}}}:unique:{task_type}:{digest}"


def server_info(host: str, pid: int, server_id: str) -> str:
    return f"asynq:servers:{{{host}:{pid}:{server_id}}}"


def workers(host: str, pid: int, server_id: str) -> str:
    return f"asynq:workers:{{{host}:{pid}:{server_id}}}"


STATE_CONTAINER = {
    "pending": pending,
    "active": active,
    "scheduled": scheduled,
    "retry": retry,
    "archived": archived,
    "completed": completed,
}

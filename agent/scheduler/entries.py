"""Periodic task entries: ``schedule: [{cron | every, type, payload, queue, timezone, ...}]``.

The same parser reads the agent config's top-level ``schedule`` list and the control server's
queues file. Every problem names the entry and key (``schedule[2].cron: ...``).

An entry's ``id`` is derived from what it enqueues and when (spec, type, payload, queue,
timezone), so every agent with the same entry computes the same ID, and with it the same task
ID per tick: that is what makes a tick enqueued once for the whole fleet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from agent.config.limits import MAX_DURATION, MAX_ENTRIES, MAX_INT32, queue_name_problem
from agent.config.values import Invalid, describe, parse_duration

__all__ = ["MISSED_POLICIES", "ScheduleEntry", "parse_schedule"]

#: skip: ticks due while no scheduler ran are dropped; run_once: one task for the latest of
#: them is enqueued when a scheduler starts again.
MISSED_POLICIES = ("skip", "run_once")
_KEYS = ("cron", "every", "type", "payload", "queue", "timezone", "missed", "id",
         "max_retry", "timeout", "retention")
_NAMESPACE = uuid.UUID("6f1c0a52-54a8-4f59-9d43-56a1f1f0c4a1")
MAX_PAYLOAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ScheduleEntry:
    """One periodic task. Exactly one of ``cron`` and ``every`` (whole seconds) is set."""

    id: str
    type: str
    payload: Any = None
    queue: str = "default"
    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"
    missed: str = "skip"
    max_retry: int | None = None
    timeout: float | None = None
    retention: float | None = None

    @property
    def spec(self) -> str:
        """As ``asynq cron ls`` shows it: the cron line, or ``@every 30s``."""
        return self.cron if self.cron is not None else f"@every {self.every}s"

    def to_dict(self) -> dict[str, Any]:
        """The entry as a ``schedule`` item (its ``id`` included), for a registration answer."""
        out: dict[str, Any] = {"id": self.id, "type": self.type, "queue": self.queue,
                               "timezone": self.timezone, "missed": self.missed}
        out.update({k: v for k, v in (("cron", self.cron), ("every", self.every),
                                      ("max_retry", self.max_retry), ("timeout", self.timeout),
                                      ("retention", self.retention)) if v is not None})
        if self.payload is not None:
            out["payload"] = self.payload
        return out

    def payload_bytes(self) -> bytes:
        if self.payload is None:
            return b""
        return json.dumps(self.payload, separators=(",", ":"), sort_keys=True).encode()

    def next_tick(self, after: float) -> int:
        """The first due time strictly after ``after`` (Unix seconds)."""
        if self.every is not None:
            return (int(after) // self.every + 1) * self.every
        start = datetime.fromtimestamp(int(after), ZoneInfo(self.timezone))
        return int(_cron(self.cron, start).get_next(float))

    def prev_tick(self, at: float) -> int:
        """The latest due time at or before ``at``."""
        if self.every is not None:
            return int(at) // self.every * self.every
        start = datetime.fromtimestamp(int(at) + 1, ZoneInfo(self.timezone))
        return int(_cron(self.cron, start).get_prev(float))

    def interval_hint(self, now: float) -> int:
        """Seconds between two ticks, as first seen (only for key lifetimes: computed once)."""
        return self.every if self.every is not None else _cron_interval(self.cron, self.timezone, int(now))


_INTERVALS: dict[tuple[str, str], int] = {}


def _cron_interval(spec: str, timezone: str, now: int) -> int:
    key = (spec, timezone)
    if key not in _INTERVALS:
        zone = ZoneInfo(timezone)
        it = _cron(spec, datetime.fromtimestamp(now, zone))
        first = it.get_next(float)
        _INTERVALS[key] = max(1, int(it.get_next(float) - first))
    return _INTERVALS[key]


def _cron(spec: str, start: datetime) -> croniter:
    # six fields: seconds first, as robfig/cron (asynq) and Quartz write them
    return croniter(spec, start, second_at_beginning=len(spec.split()) == 6)


def parse_schedule(raw: Any, path: str, report: Callable[[str, str], None]) -> tuple[ScheduleEntry, ...]:
    """Entries from a YAML list; each problem goes to ``report(path, message)``."""
    if raw is None or type(raw).__name__ == "Failed":  # a failed ${VAR} was reported already
        return ()
    if not isinstance(raw, list):
        report(path, f"expected a list of periodic task entries, got {describe(raw)}")
        return ()
    if len(raw) > MAX_ENTRIES:
        report(path, f"at most {MAX_ENTRIES} entries, got {len(raw)}")
        return ()
    out: list[ScheduleEntry] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        entry = _entry(item, where, report)
        if entry is None:
            continue
        if entry.id in seen:
            report(where, f"the same entry as {path}[{seen[entry.id]}] (id {entry.id}): "
                          "each tick would be enqueued once for both")
            continue
        seen[entry.id] = i
        out.append(entry)
    return tuple(out)


def _entry(item: Any, where: str, report: Callable[[str, str], None]) -> ScheduleEntry | None:
    if not isinstance(item, dict):
        report(where, f"expected a mapping with cron or every, type, payload, queue, got {describe(item)}")
        return None
    problems: list[str] = []

    def note(key: str, message: str) -> None:
        problems.append(key)
        report(f"{where}.{key}", message)

    for key in item:
        if str(key) not in _KEYS:
            note(str(key), f"unknown key; expected one of {', '.join(_KEYS)}")
    values: dict[str, Any] = {}
    has_cron, has_every = item.get("cron") is not None, item.get("every") is not None
    if has_cron == has_every:
        report(where, "give cron or every (exactly one)")
        problems.append("cron")
    if has_cron:
        values["cron"] = _cron_spec(item["cron"], note)
    if has_every:
        try:
            seconds = parse_duration(item["every"], 1.0)
            if seconds != int(seconds) or seconds > MAX_DURATION * 52:
                raise Invalid("", "must be a whole number of seconds (1s or more, at most a year)")
            values["every"] = int(seconds)
        except Invalid as exc:
            note("every", exc.message(item["every"]))
    task_type = item.get("type")
    if not isinstance(task_type, str) or not task_type.strip():
        note("type", f"expected a task type (a non-blank string), got {describe(task_type)}")
    values["type"] = task_type
    queue = item.get("queue", "default")
    problem = queue_name_problem(queue) if isinstance(queue, str) else f"expected a queue name, got {describe(queue)}"
    if problem:
        note("queue", problem)
    values["queue"] = queue
    tz = item.get("timezone", "UTC")
    try:
        ZoneInfo(str(tz))
        if not isinstance(tz, str):
            raise ValueError
        values["timezone"] = tz
    except (ZoneInfoNotFoundError, ValueError):
        note("timezone", f"expected an IANA time zone name like \"UTC\" or \"Europe/Paris\", got {describe(tz)}")
    missed = item.get("missed", "skip")
    if missed not in MISSED_POLICIES:
        note("missed", f"expected one of {', '.join(MISSED_POLICIES)}, got {describe(missed)}")
    values["missed"] = missed
    if "payload" in item:
        try:
            size = len(json.dumps(item["payload"], separators=(",", ":")))
            if size > MAX_PAYLOAD_BYTES:
                note("payload", f"at most {MAX_PAYLOAD_BYTES // 1024} KiB as JSON, got {size:,} bytes")
        except (TypeError, ValueError) as exc:
            note("payload", f"must be JSON data: {exc}")
        values["payload"] = item["payload"]
    _options(item, values, note)
    if problems:
        return None
    explicit = item.get("id")
    if explicit is not None and (not isinstance(explicit, str) or not explicit.strip() or len(explicit) > 128):
        note("id", f"expected a non-blank string of at most 128 characters, got {describe(explicit)}")
        return None
    ident = explicit or _derived_id(values)
    return ScheduleEntry(id=ident, **values)


def _options(item: dict, values: dict[str, Any], note: Callable[[str, str], None]) -> None:
    if item.get("max_retry") is not None:
        retry = item["max_retry"]
        if isinstance(retry, bool) or not isinstance(retry, int) or not 0 <= retry <= MAX_INT32:
            note("max_retry", f"expected an integer from 0, got {describe(retry)}")
        values["max_retry"] = retry
    for key in ("timeout", "retention"):
        if item.get(key) is not None:
            try:
                values[key] = parse_duration(item[key], 0.0)
            except Invalid as exc:
                note(key, exc.message(item[key]))


def _cron_spec(spec: Any, note: Callable[[str, str], None]) -> str | None:
    if not isinstance(spec, str) or not croniter.is_valid(
            spec, second_at_beginning=len(str(spec).split()) == 6):
        note("cron", f"expected a cron line (\"*/5 * * * *\", six fields with seconds first, "
                     f"or @hourly/@daily/...), got {describe(spec)}")
        return None
    return spec.strip()


def _derived_id(values: dict[str, Any]) -> str:
    key = json.dumps({k: values.get(k) for k in ("cron", "every", "type", "payload", "queue", "timezone")},
                     sort_keys=True, separators=(",", ":"), default=str)
    return str(uuid.uuid5(_NAMESPACE, key))

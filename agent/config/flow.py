"""The flow limits of a queue and their spelling: ``rate: 50/s``, ``max_running: 4``,
``key_max_running: 5``, ``types: {"email:send": {rate: 10/s}}``."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The asynq header naming a task's concurrency key (a tenant, a customer, an API account).
KEY_HEADER = "rundown-key"
MAX_RUNNING = 1_000_000
MAX_TYPES = 100
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(ms|s|m|h|d)\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
RATE_EXPECTED = 'a rate like "50/s", "1000/m", "10/h" or "5/10s"'
#: A rate's burst: the tokens a queue idle for a while may spend at once, about 20 ms of its
#: rate and at least 2, so a token due while the agents were busy is not lost (a window of
#: t seconds starts at most burst + rate x t tasks: 52 for 50/s over 1 s).
BURST_SECONDS = 0.02


class FlowError(ValueError):
    """A flow limit that does not parse; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class Rate:
    count: float  #: tasks...
    period: float  #: ...per this many seconds
    text: str = ""

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def interval_us(self) -> int:
        """Microseconds between tokens (what the script counts in)."""
        return max(1, round(1e6 / self.per_second))

    @property
    def burst(self) -> int:
        return max(2, math.ceil(self.per_second * BURST_SECONDS))

    def __str__(self) -> str:
        return self.text or f"{self.count:g}/{self.period:g}s"


def parse_rate(value: Any) -> Rate:
    """``50/s``, ``1000/m``, ``5/10s``, ``0.5/s``; a bare number is per second."""
    if isinstance(value, bool):
        raise FlowError(f"expected {RATE_EXPECTED}, got {value}")
    if isinstance(value, (int, float)):
        count, period, text = float(value), 1.0, f"{value:g}/s"
    elif isinstance(value, str) and (m := _RATE.fullmatch(value)):
        count = float(m.group(1))
        period = float(m.group(2) or 1) * _UNITS[m.group(3)]
        text = value.strip().replace(" ", "")
    else:
        raise FlowError(f"expected {RATE_EXPECTED}, got {str(value)[:40]!r}")
    if not count > 0 or not period > 0:
        raise FlowError(f"expected {RATE_EXPECTED}, above zero, got {str(value)[:40]!r}")
    if count / period > 1e6:
        raise FlowError(f"expected {RATE_EXPECTED}, at most 1,000,000/s, got {str(value)[:40]!r}")
    return Rate(count, period, text)


@dataclass(frozen=True, slots=True)
class TypeLimit:
    rate: Rate


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """A queue's limits, fleet-wide. Empty (``bool(limits)`` False): the plain dequeue."""

    rate: Rate | None = None
    max_running: int | None = None
    key_max_running: int | None = None
    types: dict[str, TypeLimit] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rate or self.max_running or self.key_max_running or self.types)

    @property
    def lanes(self) -> bool:
        """Pending tasks are served by lanes (per key, and per rated type), round-robin."""
        return bool(self.key_max_running or self.types)

    def merged(self, other: FlowLimits) -> FlowLimits:
        """These limits, with ``other``'s where these have none."""
        return FlowLimits(self.rate or other.rate, self.max_running or other.max_running,
                          self.key_max_running or other.key_max_running, self.types or other.types)

    def as_dict(self) -> dict[str, Any]:
        """The spelling of the config and the queues file (what /status and the register
        answer show)."""
        out: dict[str, Any] = {}
        if self.rate:
            out["rate"] = str(self.rate)
        if self.max_running:
            out["max_running"] = self.max_running
        if self.key_max_running:
            out["key_max_running"] = self.key_max_running
        if self.types:
            out["types"] = {name: {"rate": str(t.rate)} for name, t in self.types.items()}
        return out


FLOW_KEYS = ("rate", "max_running", "key_max_running", "types")


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RUNNING:
        raise FlowError(f"{name}: expected an integer from 1 to {MAX_RUNNING:,}, got {value!r:.60}")
    return value


Report = Callable[[str, str], None]


def parse_flow(raw: dict[str, Any], report: Report, where: str) -> FlowLimits:
    """The flow keys of a queue mapping (others are left to the caller); each problem goes
    to ``report(path, message)`` with its path (``<where>.<key>``)."""
    found: dict[str, Any] = {}
    for key in FLOW_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        try:
            if key == "rate":
                found[key] = parse_rate(value)
            elif key == "types":
                found[key] = _types(value, f"{where}.types", report)
            else:
                found[key] = _count(value, key)
        except FlowError as exc:
            report(f"{where}.{key}", str(exc).removeprefix(f"{key}: "))
    return FlowLimits(**found)


def _types(value: Any, where: str, report: Report) -> dict[str, TypeLimit]:
    if not isinstance(value, dict):
        raise FlowError('expected a mapping of task type to limits, like {"email:send": {rate: 10/s}}')
    if len(value) > MAX_TYPES:
        raise FlowError(f"{len(value):,} types, above the limit of {MAX_TYPES}")
    out: dict[str, TypeLimit] = {}
    for name, spec in value.items():
        path = f'{where}."{str(name)[:60]}"'
        if not isinstance(name, str) or not name or "\0" in name:
            report(path, "a task type name (a non-empty string)")
            continue
        if not isinstance(spec, dict) or set(spec) != {"rate"}:
            report(path, "expected {rate: 10/s}")
            continue
        try:
            out[name] = TypeLimit(parse_rate(spec["rate"]))
        except FlowError as exc:
            report(f"{path}.rate", str(exc))
    return out
